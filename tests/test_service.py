"""
End-to-end tests: ``twistd -n blip`` as a child process, reading a real pty,
writing to a real database, answering over a real port.
"""

import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, TIMEOUT, eventually, free_port, shared_tempdir

HOUR = 3_600_000


def get(daemon, path: str) -> tuple[int, bytes]:
    """:return: status and body of a GET."""
    try:
        with urllib.request.urlopen(daemon.url(path), timeout=TIMEOUT) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(daemon, name: str) -> float:
    """:return: the value of a metric without labels, from /metrics."""
    status, body = get(daemon, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def park(daemon, path: str) -> socket.socket:
    """Open a long-poll without waiting for its answer."""
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=TIMEOUT)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: blip\r\nConnection: close\r\n\r\n".encode())
    return s


def answer(s: socket.socket) -> bytes:
    """Read a parked long-poll's whole answer."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    s.close()
    return b"".join(chunks)


def test_serial_to_http_end_to_end(start_daemon, pty_meter, database) -> None:
    """
    Lines written into the pty come out of every legacy route; garbage is
    dropped; a long-poll gets the next blip; a client hanging up mid
    long-poll is forgotten; SIGTERM flushes and exits 0.
    """
    daemon = start_daemon("--serial", pty_meter.path, "--db", database.dsn)
    daemon.wait_for("reading serial device")
    daemon.wait_for("database ready")

    pty_meter.write(b"partial line\n")
    pty_meter.write(b"noise\n\x00\xff\n0\n-3\n99999999999\n" + b"7" * 80 + b"\n")
    # A long-poll answers the first blip after it is parked: write blips
    # until it answers (the daemon cannot be asked whether it is parked).
    waiting = park(daemon, "/blip/1")
    hung_up = park(daemon, "/blip")
    hung_up.close()
    sent = 0
    while not select.select([waiting], [], [], 0.05)[0]:
        assert sent < 200, "long-poll never answered:\n" + "\n".join(daemon.output)
        pty_meter.write(b"1000\r\n" if sent % 2 else b"1000\n")
        sent += 1
    pty_meter.write(b"2 500\n")
    live = answer(waiting)
    assert live.endswith(b"]")
    stamp, ms = json.loads(live.split(b"\r\n\r\n", 1)[1])
    assert ms == 1000
    assert abs(stamp - time.time() * 1000) < 60_000

    for ms in (1001, 1002):
        pty_meter.write(b"%d\n" % ms)
    def since_first() -> list:
        rows = json.loads(get(daemon, "/since/1/0")[1])
        return rows if len(rows) == sent + 2 else []

    rows = eventually(since_first)
    assert [r[1] for r in rows] == [1000] * sent + [1001, 1002]
    stamps = [r[0] for r in rows]
    assert stamps == sorted(set(stamps))

    assert get(daemon, "/last/1") == (200, json.dumps(rows[-1], separators=(",", ":")).encode())
    assert json.loads(get(daemon, "/last/2")[1])[1] == 500
    assert json.loads(get(daemon, f"/range/1/{stamps[0]}/{stamps[1]}")[1]) == rows[:2]
    assert json.loads(get(daemon, "/usage/1/600000")[1]) == [sent + 2]
    hour = stamps[0] - stamps[0] % HOUR
    hourly = json.loads(get(daemon, f"/hourly/1/{hour - HOUR}/{hour + HOUR}")[1])
    assert sum(h[1] for h in hourly) == sent + 2
    aggregate = json.loads(get(daemon, f"/aggregate/1/{stamps[0]}/{HOUR}/1")[1])
    assert aggregate == [[0, sent + 2]]
    assert get(daemon, "/since/1/1234567890123456")[0] == 400
    assert get(daemon, "/blip/5")[0] == 404
    # No meter 600000: the single-meter original's last 10 minutes.
    assert json.loads(get(daemon, "/last/600000")[1]) == rows

    assert database.sql("SELECT count(*) FROM readings")[0][0] == sent + 3
    daemon.wait_for(r"dropped serial line")
    # A point that is live but not yet written is written on SIGTERM.
    waiting = park(daemon, "/blip/1")
    while not select.select([waiting], [], [], 0.05)[0]:
        pty_meter.write(b"1003\n")
        sent += 1
    answer(waiting)
    assert daemon.stop(signal.SIGTERM) == 0, "\n".join(daemon.output)
    assert database.sql("SELECT count(*) FROM readings WHERE id = 1")[0][0] == sent + 2


def test_demo_serves_a_point_quickly(start_daemon) -> None:
    """
    The demo (simulated meter, embedded database) serves a point on
    /last/1 within 15 seconds of starting.
    """
    started = time.monotonic()
    daemon = start_daemon("--simulate")
    status = eventually(lambda: get(daemon, "/last/1")[0] == 200, timeout=15)
    assert status, "no point within 15 s"
    assert time.monotonic() - started < 20
    daemon.wait_for("database ready")
    assert daemon.stop() == 0
    assert any("embedded database stopped" in line for line in daemon.output)


def install(folder: Path) -> Path:
    """
    Install blipserver in ``folder``, as a real installation does, where
    every user may read it: a virtual environment holding blipserver (its
    package, with the page and the schema, and its twistd plugin, laid out
    as its wheel lays them out) and the packages it needs to run, copied
    from the environment the tests run in (a checkout may be in a folder
    only its owner may enter, its environment with it).

    :return: the installation's twistd.
    """
    import importlib.metadata
    import sysconfig
    import venv

    from packaging.requirements import Requirement

    venv.EnvBuilder(symlinks=True).create(folder)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(folder), "platbase": str(folder)}))
    needed, seen, copied = [("blipserver", frozenset[str]())], set(), {"blipserver"}
    while needed:
        name, extras = needed.pop()
        dist = importlib.metadata.distribution(name)
        key = dist.metadata["Name"].lower()
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        for text in dist.requires or []:
            required = Requirement(text)
            marker = required.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
                needed.append((required.name, frozenset(required.extras)))
        if key not in copied:
            copied.add(key)
            for file in dist.files or []:
                if ".." not in file.parts:
                    (site / file).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(Path(str(dist.locate_file(file))), site / file)
    shutil.copytree(ROOT / "blip", site / "blip", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "twisted" / "plugins").mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "twisted" / "plugins" / "blip_plugin.py", site / "twisted" / "plugins")
    twistd = folder / "bin" / "twistd"
    twistd.write_text(
        f"#!{folder / 'bin' / 'python'}\n"
        "import sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n"
    )
    twistd.chmod(0o755)
    return twistd


def test_drops_privileges_after_opening_the_serial_device(start_daemon, pty_meter) -> None:
    """
    Started as root with twistd's --uid/--gid, the daemon opens a serial
    device only root may open, then runs as that user: it reads the device
    all the same, and runs its embedded database as that user in a state
    dir it owns (its lock included, so that it may start as that user). It
    runs from an installation that user may read, and serves its page
    from there; the schema it has read before the switch (that user could
    not read it from a checkout in a private folder, here from a file only
    root may read).
    """
    if os.geteuid() != 0:
        pytest.fail("this test needs root (twistd --uid/--gid): run the tests as root")
    nobody = pwd.getpwnam("nobody")
    assert os.stat(pty_meter.path).st_mode & 0o077 == 0
    state = shared_tempdir("blip-test-nobody-")
    installed = shared_tempdir("blip-test-installed-")
    try:
        twistd = install(installed)
        (schema,) = installed.glob("lib/*/site-packages/blip/schema.sql")
        schema.chmod(0o600)
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        daemon = start_daemon(
            "--serial", pty_meter.path, state_dir=state,
            twistd=("--uid", "nobody", "--gid", str(nobody.pw_gid)), program=twistd, cwd=state,
        )
        daemon.wait_for(r"\] database ready")
        # (Up before it is stopped: a stop while the LISTEN connection
        # opens logs the cancelled attempt's traceback.)
        daemon.wait_for("receiving live points from the database")
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(nobody.pw_uid)] * 4
        assert (state / "pg").stat().st_uid == nobody.pw_uid
        assert (state / "lock").stat().st_uid == nobody.pw_uid
        pty_meter.write(b"partial\n1234\n")
        assert eventually(lambda: get(daemon, "/last/1")[0] == 200), daemon.output
        assert json.loads(get(daemon, "/last/1")[1])[1] == 1234
        page = get(daemon, "/")
        assert page[0] == 200 and b"<html" in page[1].lower()
        assert daemon.stop() == 0, "\n".join(daemon.output)
        assert any("embedded database stopped" in line for line in daemon.output)
        assert not any("Traceback" in line for line in daemon.output), "\n".join(daemon.output)
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(installed, ignore_errors=True)


def test_the_database_password_is_never_logged(start_daemon, database) -> None:
    """
    Passwords in --db and --db-read (the test cluster trusts everyone, so
    any password works) appear nowhere in the daemon's output: not when it
    connects, nor while the replica cannot be reached, nor when the
    LISTEN connection is cut, nor when a bad connection string is refused.
    """
    secret = "s3cr3t-blip-pw"
    cluster = database.cluster.cluster
    dsn = f"postgresql://blip:{secret}@/{database.name}?host={cluster.sockets}&port=5432"
    replica = f"host=127.0.0.1 port={free_port()} dbname=x password={secret} connect_timeout=1"
    daemon = start_daemon("--db", dsn, "--db-read", replica, "--node-name", "pw")
    daemon.wait_for("receiving live points from the database")
    database.cluster.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'blipserver listen pw'",
    )
    daemon.wait_for("live points from the database are back")
    assert get(daemon, "/last/1")[0] == 503
    daemon.wait_for("database unreachable: Connection refused")
    assert daemon.stop() == 0
    twistd = Path(sys.executable).parent / "twistd"
    refused = subprocess.run(
        [str(twistd), "--nodaemon", "--pidfile=", "blip", "--db", f"host=x password {secret}"],
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 1
    assert "--db: not a connection string" in refused.stdout + refused.stderr
    assert secret not in "\n".join(daemon.output) + refused.stdout + refused.stderr


def test_a_second_daemon_on_the_same_state_dir_is_refused(start_daemon, database, daemon_env) -> None:
    """
    The state dir (spool, record of ingest periods, embedded database)
    belongs to one daemon: a second started on it while the first runs
    ends at once with status 1 and one line naming the first's process;
    once the first has stopped, it starts.
    """
    first = start_daemon("--db", database.dsn)
    first.wait_for("database ready")
    twistd = Path(sys.executable).parent / "twistd"
    second = [str(twistd), "--nodaemon", "--pidfile=", "blip", "--db", database.dsn,
              "--state-dir", str(start_daemon.state), "--listen", f"tcp:{free_port()}:interface=127.0.0.1"]
    done = subprocess.run(second, capture_output=True, text=True, env=daemon_env, timeout=60)
    assert done.returncode == 1
    assert (done.stdout, done.stderr) == (
        "",
        f"twistd blip: --state-dir: {start_daemon.state} is in use by blipserver process"
        f" {first.process.pid}\n",
    )
    first.stop()
    again = start_daemon("--db", database.dsn)
    again.wait_for("database ready")


def test_a_state_dir_with_spaces_and_quotes(start_daemon, pty_meter) -> None:
    """
    A state dir whose path holds spaces and quotes works: the daemon
    takes its lock, runs its embedded database there, stores a blip, and
    stops cleanly.
    """
    folder = shared_tempdir("blip-test-odd-")
    odd = folder / "it's a \"state\" dir"
    odd.mkdir(mode=0o755)
    try:
        daemon = start_daemon("--serial", pty_meter.path, state_dir=odd)
        daemon.wait_for(r"\] database ready")
        pty_meter.write(b"partial\n1234\n")
        assert eventually(lambda: get(daemon, "/last/1")[0] == 200), daemon.output
        assert (odd / "lock").read_text() == f"{daemon.pid}\n"
        assert daemon.stop() == 0, "\n".join(daemon.output)
        assert any("embedded database stopped" in line for line in daemon.output)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
