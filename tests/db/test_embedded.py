"""
Tests of the embedded PostgreSQL cluster: first start, restart on the same
data, adopting a server left running, long and odd state paths, and how
private it is (who may connect, and how; its socket folder; a cluster an
older blipserver made).
"""

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import pytest_twisted
from psycopg2.extensions import make_dsn

from blip.db.embedded import PORT, Cluster, EmbeddedError, EmbeddedPostgres
from tests.conftest import shared_tempdir


@pytest.fixture
def state() -> Iterator[Path]:
    """A state dir the database user may enter; any server in it is stopped after."""
    folder = shared_tempdir("blip-test-embedded-")
    try:
        yield folder
    finally:
        for data in folder.glob("**/data/PG_VERSION"):
            cluster = Cluster.at(data.parent.parent)
            cluster.run_sync(cluster.stop_argv())
        shutil.rmtree(folder, ignore_errors=True)


def sql(dsn: str, statement: str) -> list[tuple]:
    connection = psycopg2.connect(dsn)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_first_start_restart_and_stop(state: Path) -> None:
    """
    The first start creates the cluster and the database; a second start
    reuses the data; stopping stops the server.
    """
    from twisted.internet import reactor

    cluster = Cluster.at(state / "pg")
    service = EmbeddedPostgres(cluster, reactor)
    service.startService()
    await service.when_ready()
    sql(service.dsn, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    assert not Path(cluster.sockets, f".s.PGSQL.{PORT}").is_symlink()
    await service.stopService()
    assert cluster.run_sync(cluster.status_argv()).returncode != 0

    again = EmbeddedPostgres(Cluster.at(state / "pg"), reactor)
    again.startService()
    await again.when_ready()
    assert sql(again.dsn, "SELECT x FROM kept") == [(42,)]
    assert sql(again.dsn, "SHOW listen_addresses") == [("",)]
    await again.stopService()


@pytest_twisted.ensureDeferred
async def test_adopts_a_server_left_running(state: Path) -> None:
    """
    A server still running from a daemon killed with SIGKILL is reused, and
    stopped when this daemon stops.
    """
    from twisted.internet import reactor

    first = EmbeddedPostgres(Cluster.at(state / "pg"), reactor)
    first.startService()
    await first.when_ready()
    # The daemon dies without stopping its server: make a new one.
    second = EmbeddedPostgres(Cluster.at(state / "pg"), reactor)
    second.startService()
    await second.when_ready()
    assert sql(second.dsn, "SELECT 1") == [(1,)]
    await second.stopService()
    cluster = Cluster.at(state / "pg")
    assert cluster.run_sync(cluster.status_argv()).returncode != 0


@pytest_twisted.ensureDeferred
async def test_long_state_path_puts_the_socket_elsewhere(state: Path) -> None:
    """
    A state dir too deep for a Unix socket path still works: the socket
    goes to a short folder of its own.
    """
    from twisted.internet import reactor

    deep = state / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    for folder in (deep.parent, deep):
        folder.chmod(0o755)
    cluster = Cluster.at(deep / "pg")
    assert not str(cluster.sockets).startswith(str(deep))
    service = EmbeddedPostgres(cluster, reactor)
    service.startService()
    await service.when_ready()
    assert sql(service.dsn, "SELECT 2") == [(2,)]
    info = cluster.sockets.lstat()
    assert (info.st_uid, info.st_mode & 0o7777) == (cluster.user.pw_uid, 0o700)
    await service.stopService()


def test_a_cluster_of_another_user_is_refused_with_the_fix(state: Path) -> None:
    """
    A cluster folder that belongs to another user than the one the server
    would run as (made while the daemon ran as root, say, and started now
    as the user twistd --uid switches to) is refused with the chown that
    fixes it, before anything is run in it.
    """
    cluster = Cluster.at(state / "pg")
    (state / "pg").mkdir()
    runner = cluster.user.pw_uid
    if os.geteuid() != 0:
        # Without root no folder can be given to another user: the check
        # passes for our own.
        cluster.check()
        return
    os.chown(state / "pg", runner, runner)
    cluster.check()
    os.chown(state / "pg", 65534, 65534)
    assert runner != 65534
    with pytest.raises(EmbeddedError, match=r"belongs to user nobody.*chown -R"):
        cluster.check()


def hba_and_ident(dsn: str) -> tuple[list[tuple], set[tuple]]:
    """:return: the connection rules as the server reads them, and the user map."""
    return (
        sql(dsn, "SELECT type, database, user_name, address, auth_method, options, error"
                 " FROM pg_hba_file_rules ORDER BY line_number"),
        set(sql(dsn, "SELECT map_name, sys_name, pg_username FROM pg_ident_file_mappings")),
    )


@pytest_twisted.ensureDeferred
async def test_the_cluster_is_private_from_initdb_on(state: Path) -> None:
    """
    Right after initdb (where a crash may stop the first start), the rules
    trust no one. Started, the server listens on no TCP port whatever its
    settings file says (the settings are on its command line); blipserver's
    database user logs in over the socket as root or as the server's own
    user (peer, through a map), and only so; a role made by hand needs its
    password; TCP is rejected.
    """
    from twisted.internet import reactor

    cluster = Cluster.at(state / "pg")
    cluster.prepare_folders()
    done = cluster.run_sync(cluster.initdb_argv())
    assert done.returncode == 0, done.stdout + done.stderr
    rules = [line.split() for line in (cluster.data / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules and {rule[-1] for rule in rules} <= {"peer", "reject"}
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("listen_addresses = '*'\nport = 1\n")

    service = EmbeddedPostgres(Cluster.at(state / "pg"), reactor)
    service.startService()
    await service.when_ready()
    try:
        assert sql(service.dsn, "SHOW listen_addresses") == [("",)]
        assert sql(service.dsn, "SHOW port") == [(str(PORT),)]
        assert hba_and_ident(service.dsn) == (
            [
                ("local", ["all"], ["blip"], None, "peer", ["map=blip"], None),
                ("local", ["all"], ["all"], None, "scram-sha-256", None, None),
                ("host", ["all"], ["all"], "all", "reject", None, None),
            ],
            {("blip", "root", "blip"), ("blip", cluster.user.pw_name, "blip")},
        )
        sql(service.dsn, "CREATE ROLE reader LOGIN")
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(make_dsn(service.dsn, user="reader"))
        sql(service.dsn, "ALTER ROLE reader PASSWORD 'pw-2'")
        assert sql(make_dsn(service.dsn, user="reader", password="pw-2"), "SELECT 3") == [(3,)]
    finally:
        await service.stopService()


def as_an_older_blipserver_made_it(cluster: Cluster) -> None:
    """
    Make a cluster as blipserver did before its cluster was private:
    every local user trusted, the settings in a file of blipserver's
    included from postgresql.conf; and leave its server running, as a
    daemon killed before an upgrade would.
    """
    cluster.prepare_folders()
    initdb = [str(cluster.bindir / "initdb"), "-D", str(cluster.data), "-U", "blip", "--auth=trust",
              "--no-locale", "-E", "UTF8"]
    done = cluster.run_sync(initdb)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("\ninclude_if_exists = 'blip.conf'\n")
    settings = cluster.data / "blip.conf"
    settings.write_text(
        "# Written by blipserver at every start.\n"
        "listen_addresses = ''\n"
        f"unix_socket_directories = '{cluster.sockets}'\n"
        f"port = {PORT}\n"
    )
    os.chown(settings, *cluster.owner)
    start = [str(cluster.bindir / "pg_ctl"), "start", "-D", str(cluster.data), "-w",
             "-l", str(cluster.log_file)]
    done = cluster.run_sync(start)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_a_cluster_of_an_older_blipserver_becomes_private(state: Path) -> None:
    """
    A cluster an older blipserver made, whose server it left running, is
    brought to the same rules as a new one when the daemon starts (its
    server restarted with them, and again from its files alone), without
    losing a row: a role without a password no longer gets in, and the
    old settings file and the line including it are gone.
    """
    from twisted.internet import reactor

    old = Cluster.at(state / "pg")
    as_an_older_blipserver_made_it(old)
    sql(old.dsn("postgres"), "CREATE DATABASE blip")
    sql(old.dsn(), "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42); CREATE ROLE reader LOGIN")
    assert sql(make_dsn(old.dsn(), user="reader"), "SELECT 1") == [(1,)]

    for _ in range(2):
        service = EmbeddedPostgres(Cluster.at(state / "pg"), reactor)
        service.startService()
        await service.when_ready()
        try:
            assert sql(service.dsn, "SELECT x FROM kept") == [(42,)]
            assert sql(service.dsn, "SHOW listen_addresses") == [("",)]
            with pytest.raises(psycopg2.OperationalError, match="password"):
                psycopg2.connect(make_dsn(service.dsn, user="reader"))
        finally:
            await service.stopService()
        assert not (old.data / "blip.conf").exists()
        assert "blip.conf" not in (old.data / "postgresql.conf").read_text()


@pytest_twisted.ensureDeferred
async def test_a_state_dir_with_spaces_and_quotes(state: Path) -> None:
    """
    A state dir whose path holds spaces, quotes, a dollar, a backquote or
    a comma (which pg_ctl's shell, PostgreSQL's list of socket folders and
    libpq's connection strings and host lists would each read their own
    way) works: the server starts, takes connections and stops.
    """
    from twisted.internet import reactor

    for name in ("it's a \"quoted\" $HOME `dir`", "a, b"):
        odd = state / name
        odd.mkdir(mode=0o755)
        cluster = Cluster.at(odd / "pg")
        # (A comma would split libpq's list of hosts: the socket goes to
        # the temporary directory.)
        assert str(cluster.sockets).startswith(str(odd)) == ("," not in name)
        service = EmbeddedPostgres(cluster, reactor)
        service.startService()
        await service.when_ready()
        assert sql(service.dsn, "SELECT 4") == [(4,)]
        await service.stopService()
        assert cluster.run_sync(cluster.status_argv()).returncode != 0


def test_the_socket_folder_in_the_temporary_directory_must_be_private(state: Path) -> None:
    """
    The socket folder a deep state dir puts in the system's temporary
    directory, under a name anyone can work out, is taken only when it is
    the server user's and private: one made first by another user, or one
    others may enter, is refused, naming it; a missing one is made so.
    """
    deep = state / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    cluster = Cluster.at(deep / "pg")
    sockets = cluster.sockets
    assert not str(sockets).startswith(str(state))
    if os.geteuid() != 0:
        pytest.fail("this test needs root (folders of other users): run the tests as root")
    nobody = pwd.getpwnam("nobody")
    assert cluster.user.pw_uid != nobody.pw_uid
    sockets.mkdir(mode=0o700)
    try:
        os.chown(sockets, nobody.pw_uid, nobody.pw_gid)
        for check in (cluster.check, cluster.prepare_folders):
            wrong = f"^{sockets} belongs to user nobody, not to {cluster.user.pw_name}$"
            with pytest.raises(EmbeddedError, match=wrong):
                check()
        os.chown(sockets, *cluster.owner)
        os.chmod(sockets, 0o755)
        with pytest.raises(EmbeddedError, match=f"^{sockets} is open to other users .mode 0755."):
            cluster.prepare_folders()
        os.rmdir(sockets)
        cluster.check()
        cluster.prepare_folders()
        info = sockets.lstat()
        assert (info.st_uid, info.st_mode & 0o7777) == (cluster.user.pw_uid, 0o700)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
