"""
Tests of the embedded PostgreSQL cluster: first start, restart on the same
data, adopting a server left running, and long state paths.
"""

import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import pytest_twisted

from blip.db.embedded import PORT, Cluster, EmbeddedPostgres
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
    await service.stopService()


def test_a_cluster_of_another_user_is_refused_with_the_fix(state: Path) -> None:
    """
    A cluster folder that belongs to another user than the one the server
    would run as (made while the daemon ran as root, say, and started now
    as the user twistd --uid switches to) is refused with the chown that
    fixes it, before anything is run in it.
    """
    import os

    from blip.db.embedded import EmbeddedError

    cluster = Cluster.at(state / "pg")
    (state / "pg").mkdir()
    runner = cluster.user.pw_uid if cluster.user is not None else os.geteuid()
    if os.geteuid() != 0:
        # Without root no folder can be given to another user: the check
        # passes for our own.
        cluster.check_owner()
        return
    os.chown(state / "pg", runner, runner)
    cluster.check_owner()
    os.chown(state / "pg", 65534, 65534)
    assert runner != 65534
    with pytest.raises(EmbeddedError, match=r"belongs to user nobody.*chown -R"):
        cluster.check_owner()
