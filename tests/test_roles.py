"""
Several nodes on one database, end to end: ``twistd -n blip`` children in
the ingest, web and all roles, each ingest node reading its own pty, all
sharing the test cluster. Live points go from ingest nodes to web nodes by
NOTIFY/LISTEN through PostgreSQL alone.
"""

import json
import select
import signal
import socket
import time

import psycopg2

from tests.conftest import eventually, open_pty
from tests.test_service import answer, get, park

INGEST_READY = r"database ready"


def body(raw: bytes) -> list:
    """:return: the JSON body of a raw HTTP answer."""
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def blip_until_answered(parked: list[socket.socket], ptys: list, lines: list[bytes]) -> int:
    """
    Write ``lines[i]`` into ``ptys[i]``, over and over, until every parked
    long-poll has its answer (a long-poll answers the first blip after it
    is parked, and whether it is parked yet cannot be asked).

    :return: how many rounds were written.
    """
    rounds = 0
    while True:
        waiting = [s for s in parked if not select.select([s], [], [], 0)[0]]
        if not waiting:
            return rounds
        assert rounds < 300, "long-polls never answered"
        for pty, line in zip(ptys, lines):
            pty.write(line)
        rounds += 1
        select.select(waiting, [], [], 0.05)


def settle(database, nodes: list, written: dict[int, int]) -> None:
    """
    Wait until the database has every line written so far and every node's
    newest point of each meter is the newest stored, so that a long-poll
    parked next gets a point written after it.

    :param written: how many lines were written for each meter so far.
    """
    for meter, count in written.items():
        stored = lambda: database.sql("SELECT count(*) FROM readings WHERE id = %s", (meter,))
        assert eventually(lambda: stored()[0][0] == count), (meter, stored(), count)
        rows = database.sql(
            "SELECT stamp, ms FROM readings WHERE id = %s ORDER BY stamp DESC LIMIT 1", (meter,)
        )
        newest = json.dumps(list(rows[0]), separators=(",", ":")).encode()
        for node in nodes:
            assert eventually(lambda: (200, newest) == get(node, f"/last/{meter}")), node.output


def test_two_ingest_and_two_web_nodes_share_one_database(start_daemon, database, tmp_path) -> None:
    """
    Two ingest nodes (meters 1 and 2, each its own pty, no HTTP) and two
    web nodes: a long-poll on each web node gets the points of both ingest
    nodes. Killing one web node, then one ingest node, leaves the others
    serving: the remaining web node still gets the remaining ingest node's
    points, which are all stored.
    """
    dsn = database.dsn
    pty_a, pty_b = open_pty(), open_pty()
    try:
        ingest = [
            start_daemon(
                "--role", "ingest", "--serial", pty.path, "--db", dsn, "--node-name", name,
                listen=False, state_dir=tmp_path / name, ready=INGEST_READY,
            )
            for name, pty in (("cabinet-a", pty_a), ("cabinet-b", pty_b))
        ]
        for node in ingest:
            node.wait_for("reading serial device")
            assert not any("starting on" in line for line in node.output)
        web = [
            start_daemon("--role", "web", "--db", dsn, state_dir=tmp_path / name)
            for name in ("web-1", "web-2")
        ]
        for node in web:
            node.wait_for("receiving live points from the database")

        # The first line after opening is dropped; then both meters exist.
        for pty, line in ((pty_a, b"1 1000\n"), (pty_b, b"2 5000\n")):
            pty.write(b"partial\n" + line)
        for node in web:
            for meter in (1, 2):
                assert eventually(lambda: get(node, f"/last/{meter}")[0] == 200), node.output

        written = {1: 1, 2: 1}
        settle(database, web, written)
        parked = [park(node, f"/blip/{meter}") for node in web for meter in (1, 2)]
        get(web[1], "/last/1")  # the long-polls' requests have been read
        rounds = blip_until_answered(parked, [pty_a, pty_b], [b"1 1001\n", b"2 5001\n"])
        written = {meter: count + rounds for meter, count in written.items()}
        answers = [body(answer(s)) for s in parked]
        assert [ms for _, ms in answers] == [1001, 5001, 1001, 5001]
        assert all(abs(stamp - time.time() * 1000) < 60_000 for stamp, _ in answers)

        web[0].stop(signal.SIGKILL)
        settle(database, web[1:], written)
        parked = [park(web[1], "/blip/1"), park(web[1], "/blip/2")]
        get(web[1], "/last/1")
        rounds = blip_until_answered(parked, [pty_a, pty_b], [b"1 1002\n", b"2 5002\n"])
        written = {meter: count + rounds for meter, count in written.items()}
        assert [body(answer(s))[1] for s in parked] == [1002, 5002]

        ingest[0].stop(signal.SIGKILL)
        settle(database, web[1:], {2: written[2]})
        parked = [park(web[1], "/blip/2")]
        get(web[1], "/last/1")
        rounds = blip_until_answered(parked, [pty_b], [b"2 5003\n"])
        assert body(answer(parked[0]))[1] == 5003
        assert web[1].process.poll() is None and ingest[1].process.poll() is None
        settle(database, web[1:], {2: written[2] + rounds})
        assert ingest[1].stop() == 0 and web[1].stop() == 0
    finally:
        pty_a.close()
        pty_b.close()


def test_a_web_node_catches_up_after_losing_its_listen_connection(
    start_daemon, database, pty_meter, pg_cluster, tmp_path
) -> None:
    """
    An all node reads the meter; a web node on another port serves its
    points live. The web node's LISTEN connection is cut and cannot come
    back while three blips are stored; once it is back, a long-poll parked
    on it before the cut answers the first of them, as a long-poll parked
    on the all node did.
    """
    dsn = database.dsn
    node = start_daemon(
        "--serial", pty_meter.path, "--db", dsn, "--node-name", "pi", state_dir=tmp_path / "all"
    )
    node.wait_for("reading serial device")
    web = start_daemon("--role", "web", "--db", dsn, "--node-name", "web", state_dir=tmp_path / "web")
    web.wait_for("receiving live points from the database")
    pty_meter.write(b"partial\n1000\n")
    assert eventually(lambda: get(web, "/last/1")[0] == 200), web.output
    # /last may answer from the database before the point's notification
    # reaches the web node: a long-poll parked meanwhile would get it.
    assert eventually(lambda: b"\nblip_notified_total 1.0\n" in get(web, "/metrics")[1])

    on_web, on_node = park(web, "/blip/1"), park(node, "/blip/1")
    get(web, "/last/1")
    get(node, "/last/1")
    # Opened before connections are refused, to watch the blips arrive.
    watch = psycopg2.connect(dsn)
    watch.autocommit = True
    allow = f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS %s"
    pg_cluster.sql("postgres", allow % "false")
    try:
        cut = pg_cluster.sql(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'blipserver listen web' AND datname = %s",
            (database.name,),
        )
        assert cut == [(True,)]
        web.wait_for("no live points from the database")
        for ms in (2001, 2002, 2003):
            pty_meter.write(b"%d\n" % ms)
        with watch.cursor() as cursor:
            def stored() -> int:
                cursor.execute("SELECT count(*) FROM readings WHERE ms > 2000")
                return cursor.fetchone()[0]

            assert eventually(lambda: stored() == 3)
    finally:
        pg_cluster.sql("postgres", allow % "true")
        watch.close()
    web.wait_for("live points from the database are back; read 3 points")
    first = database.sql("SELECT stamp, ms FROM readings WHERE ms > 2000 ORDER BY stamp LIMIT 1")
    assert body(answer(on_web)) == list(first[0])
    assert body(answer(on_node)) == list(first[0])
    assert web.stop() == 0 and node.stop() == 0
