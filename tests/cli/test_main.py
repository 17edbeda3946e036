"""
Tests of the ``blip`` command, run as ``python -m blip`` child processes
against a real database: import and export, rollup rebuild and check,
upgrade, and how each finds the database.
"""

import gzip
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2

from tests import originals
from tests.conftest import ROOT, TIMEOUT, eventually, free_port
from tests.originals import HOUR, MINUTE, MULTI

DAY = 24 * HOUR
T0 = 1_600_000_000_000
#: The hour T0 falls in.
A = T0 - T0 % HOUR


def blip(*args: str, db: str = "", stdin: str = "", env: dict = None, command=None):
    """
    Run the ``blip`` command.

    :param db: its ``BLIP_DB``, if any.
    :return: the finished process, output as text.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BLIP_")}
    if db:
        environment["BLIP_DB"] = db
    environment.update(env or {})
    argv = command or [sys.executable, "-m", "blip"]
    return subprocess.run(
        [*argv, *args], input=stdin, capture_output=True, text=True,
        env=environment, cwd=ROOT, timeout=TIMEOUT * 4,
    )


def assert_rollups_match(database) -> None:
    """Both rollup tables hold exactly a recount of readings."""
    assert originals.rollups(database.sql, "readings_minutely") == originals.recount(database.sql, MINUTE)
    assert originals.rollups(database.sql, "readings_hourly") == originals.recount(database.sql, HOUR)


CSV = """stamp,ms
1600000000000,1000
1600000001000,900

bad,1
1600000002000,0
1600000003000,-5
1600000004000,1,2
 1600000005000 , 1200
1600000001000,900
99999999999999999999,5
1600000006000,3000000000
"1600000007000","700"
1600000086400000,86400000
"""
GOOD = [
    (1600000000000, 1000), (1600000001000, 900), (1600000005000, 1200),
    (1600000007000, 700), (1600000086400000, 86400000),
]


def test_import_and_export_round_trip(database, tmp_path) -> None:
    """
    Importing a CSV file into an empty database creates the schema, imports
    the good points once (header optional, duplicates skipped), reports each
    bad line by number and exits 1; export writes them back exactly; and
    the export imported into another meter exports the very same bytes.
    """
    source = tmp_path / "points.csv"
    source.write_text(CSV)
    done = blip("import", str(source), "--meter", "7", db=database.dsn)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "blip: created blipserver's schema (version 4) in an empty database",
        f"{source}:5: stamp 'bad' is not a whole number of ms; skipped",
        f"{source}:6: ms 0 is not from 1 to 2147483647; skipped",
        f"{source}:7: ms '-5' is not a whole number; skipped",
        f"{source}:8: expected 2 fields (stamp,ms), found 3; skipped",
        f"{source}:11: stamp 99999999999999999999 is too large; skipped",
        f"{source}:12: ms 3000000000 is not from 1 to 2147483647; skipped",
    ]
    assert done.stdout == (
        f"{source}: 6 points read for meter 7: 5 imported, 1 already stored; 6 bad lines skipped\n"
    )
    assert database.sql("SELECT stamp, ms FROM readings WHERE id = 7 ORDER BY stamp") == GOOD
    assert database.sql("SELECT id, label, pulses_per_kwh FROM meters WHERE id = 7") == [(7, "Meter 7", 1000.0)]
    assert_rollups_match(database)

    exported = blip("export", "--meter", "7", db=database.dsn)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == "stamp,ms\n" + "".join(f"{s},{m}\n" for s, m in GOOD)
    again = blip("import", "-", "--meter", "7", db=database.dsn, stdin=exported.stdout)
    assert again.returncode == 0
    assert again.stdout == "<stdin>: 5 points read for meter 7: 0 imported, 5 already stored; 0 bad lines skipped\n"

    headless = exported.stdout.split("\n", 1)[1]
    assert blip("import", "-", "--meter", "8", db=database.dsn, stdin=headless).returncode == 0
    copy = blip("export", "--meter", "8", db=database.dsn)
    assert copy.stdout == exported.stdout
    part = blip("export", "--meter", "8", "--from", "1600000001000", "--to", "1600000005000", db=database.dsn)
    assert part.stdout == "stamp,ms\n1600000001000,900\n1600000005000,1200\n"
    assert_rollups_match(database)


def peak_memory(*args: str, db: str) -> int:
    """
    Run ``blip`` with its output thrown away.

    :return: its peak resident memory in KiB.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BLIP_")}
    environment["BLIP_DB"] = db
    child = subprocess.Popen(
        [sys.executable, "-m", "blip", *args], stdout=subprocess.DEVNULL, env=environment, cwd=ROOT
    )
    _, status, usage = os.wait4(child.pid, 0)
    assert status == 0
    return usage.ru_maxrss


def test_export_streams_in_constant_memory(database) -> None:
    """
    Exporting 300 000 points takes no more memory than exporting none
    (holding them in the process would take tens of MiB more).
    """
    assert blip("upgrade", db=database.dsn).returncode == 0
    database.sql(
        "INSERT INTO readings (id, stamp, ms)"
        " SELECT 1, %s + i * 1000, 1000 FROM generate_series(1, 300000) i", (T0,)
    )
    empty = peak_memory("export", "--meter", "1", "--to", "0", db=database.dsn)
    everything = peak_memory("export", "--meter", "1", db=database.dsn)
    assert everything - empty < 10 * 1024, (empty, everything)


def damage(database) -> None:
    """
    Break the rollups in every way: a wrong minute, a missing hour, an hour
    without readings, a minute not aligned, for two meters on two days.
    """
    for meter in (1, 2):
        database.sql(
            "UPDATE readings_minutely SET events = events + 1 WHERE id = %s AND stamp = %s",
            (meter, A + HOUR + 5 * MINUTE),
        )
        database.sql("DELETE FROM readings_hourly WHERE id = %s AND stamp = %s", (meter, A + DAY + 2 * HOUR))
        database.sql(
            "INSERT INTO readings_hourly (id, stamp, events, sum_ms, min_ms, max_ms)"
            " VALUES (%s, %s, 1, 1000, 1000, 1000)", (meter, A + 60 * DAY)
        )
        database.sql(
            "INSERT INTO readings_minutely (id, stamp, events, sum_ms, min_ms, max_ms)"
            " VALUES (%s, %s, 1, 1000, 1000, 1000)", (meter, A + DAY + 30_000)
        )


def test_rollups_check_and_rebuild(database) -> None:
    """
    ``rollups check`` lists every rollup row that does not match readings
    and exits 1; ``rollups rebuild`` for one meter and range mends that
    alone, in a transaction per day; a rebuild of everything leaves rollups
    equal to a recount, which check confirms with exit status 0. Rows older
    than a meter's first reading are history: kept and not reported.
    """
    assert blip("upgrade", db=database.dsn).returncode == 0
    database.sql(
        "INSERT INTO readings (id, stamp, ms)"
        " SELECT m, %s + i * 10000, 1000 + i %% 7 FROM generate_series(0, 25919) i, (VALUES (1), (2)) v(m)",
        (T0,),
    )
    history = (1, T0 - 10 * DAY, 3, 3000, 1000, 1000)
    database.sql("INSERT INTO readings_hourly VALUES (%s, %s, %s, %s, %s, %s)", history)
    damage(database)

    check = blip("rollups", "check", db=database.dsn)
    assert check.returncode == 1
    assert check.stdout.count("meter 1 ") == 4 and check.stdout.count("meter 2 ") == 4
    assert f"meter 1 minute {A + DAY + 30_000} " in check.stdout
    assert f"meter 2 hour {A + DAY + 2 * HOUR} (2020-09-14 14:00 UTC): readings give 360 blips" in check.stdout
    assert "the rollup has nothing" in check.stdout
    assert "0 minute and 1 hour rows older than the first reading are history" in check.stdout
    assert check.stdout.endswith("8 rollup rows do not match readings: run `blip rollups rebuild`\n")

    one = blip("rollups", "rebuild", "--meter", "2", "--from", str(T0), "--to", str(A + 2 * DAY - 1),
               db=database.dsn)
    assert one.returncode == 0, one.stderr
    assert "in 2 transactions; 2 minute rows and 1 hour rows were wrong" in one.stdout
    after = blip("rollups", "check", "--meter", "2", db=database.dsn)
    assert after.returncode == 1 and after.stdout.count("meter 2 ") == 1
    assert blip("rollups", "check", "--meter", "1", db=database.dsn).stdout.count("meter 1 ") == 4

    everything = blip("rollups", "rebuild", db=database.dsn)
    assert everything.returncode == 0
    final = blip("rollups", "check", db=database.dsn)
    assert final.returncode == 0, final.stdout
    assert final.stdout.endswith("the rollups match readings\n")
    hourly = originals.rollups(database.sql, "readings_hourly")
    assert hourly[0] == history
    assert hourly[1:] == originals.recount(database.sql, HOUR)
    assert originals.rollups(database.sql, "readings_minutely") == originals.recount(database.sql, MINUTE)


def test_rebuild_while_another_writer_inserts(database) -> None:
    """
    Rows inserted by another writer while a rebuild runs over the same
    hours are counted exactly once.
    """
    assert blip("upgrade", db=database.dsn).returncode == 0
    database.sql(
        "INSERT INTO readings (id, stamp, ms)"
        " SELECT 1, %s + i * 2000, 2000 FROM generate_series(0, 5 * 43200 - 1) i", (T0,)
    )
    database.sql("UPDATE readings_hourly SET events = 0")
    stop = threading.Event()
    written = []

    def write() -> None:
        connection = psycopg2.connect(database.dsn)
        try:
            n = 0
            while not stop.is_set():
                with connection, connection.cursor() as cursor:
                    day = n % 5
                    cursor.execute(
                        "INSERT INTO readings (id, stamp, ms)"
                        " SELECT 1, %s + i * 2000 + 1 + %s, 7 FROM generate_series(0, 99) i",
                        (T0 + day * DAY, n // 5),
                    )
                written.append(time.monotonic())
                n += 1
        finally:
            connection.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert eventually(lambda: len(written) > 3)
        started = time.monotonic()
        rebuilt = blip("rollups", "rebuild", db=database.dsn)
        ended = time.monotonic()
    finally:
        stop.set()
        writer.join(TIMEOUT)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert any(started < t < ended for t in written), "the writer did not write during the rebuild"
    assert_rollups_match(database)


def test_upgrade_command_and_what_readers_need(database, pg_cluster) -> None:
    """
    ``blip upgrade`` upgrades an original database like the daemon and
    says so; commands that only read refuse one not yet upgraded; a foreign
    database is refused by every command, untouched.
    """
    originals.build(database.dsn, MULTI)
    originals.fill(database.dsn, MULTI, 2000)
    export = blip("export", "--meter", "1", db=database.dsn)
    assert export.returncode == 1
    assert export.stderr == (
        "blip: error: the database has the original multi-meter layout (version 2), not"
        " blipserver's schema (version 4): run `blip upgrade` or start the daemon first\n"
    )
    assert blip("rollups", "check", db=database.dsn).returncode == 1

    done = blip("upgrade", db=database.dsn)
    assert done.returncode == 0
    assert done.stdout.startswith(
        "upgraded the database in place from the original multi-meter layout (version 2)"
        " to blipserver's schema (version 4): dropped the original's per-row trigger"
    )
    assert blip("upgrade", db=database.dsn).stdout == "the database has blipserver's schema (version 4)\n"
    assert blip("rollups", "check", db=database.dsn).returncode == 0

    database.sql("CREATE DATABASE " + database.name + "_x")
    foreign = pg_cluster.dsn(database.name + "_x")
    try:
        originals.execute(foreign, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        for args in (["upgrade"], ["import", "-", "--meter", "1"], ["rollups", "rebuild"], ["export", "--meter", "1"]):
            refused = blip(*args, db=foreign, stdin="1,1\n")
            assert refused.returncode == 1
            assert refused.stderr.startswith("blip: error: refusing to use the database: it is not empty (notes)")
        assert pg_cluster.sql(database.name + "_x", "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'") == [("notes",)]
    finally:
        pg_cluster.sql("postgres", f"DROP DATABASE {database.name}_x WITH (FORCE)")


def test_archive_writes_the_raw_points_before_a_date(database, tmp_path) -> None:
    """
    ``blip archive --before DATE FILE`` writes every meter's raw points
    before DATE (a date in UTC, a date-time with an offset, or unix ms) to
    a new gzip-compressed CSV file, by meter and stamp, and keeps them in
    the database; it never writes over a file, and leaves no partial one.
    """
    assert blip("upgrade", db=database.dsn).returncode == 0
    day = T0 - T0 % DAY + DAY  # 2020-09-14 00:00 UTC
    points = [(m, s, 1000 + m) for m in (2, 1) for s in range(day - 3 * HOUR, day + 3 * HOUR, HOUR)]
    database.sql(
        "INSERT INTO readings (id, stamp, ms) SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::integer[])",
        tuple(map(list, zip(*points))),
    )
    path = tmp_path / "raw.csv.gz"
    done = blip("archive", "--before", "2020-09-14", str(path), db=database.dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{path}: 6 raw points before 2020-09-14 00:00 UTC\n"
    with gzip.open(path, "rt") as archive:
        assert archive.read() == "meter,stamp,ms\n" + "".join(
            f"{m},{s},{ms}\n" for m, s, ms in sorted(points) if s < day
        )
    assert database.sql("SELECT count(*) FROM readings") == [(12,)]

    again = blip("archive", "--before", "2020-09-14T02:00+01:00", str(path), db=database.dsn)
    assert (again.returncode, again.stderr) == (1, f"blip: error: {path}: exists; an archive is never written over\n")
    later = tmp_path / "later.csv.gz"
    assert blip("archive", "--before", str(day + HOUR + 1), str(later), db=database.dsn).stdout == (
        f"{later}: 10 raw points before 2020-09-14 01:00:00 UTC\n"
    )
    bad = blip("archive", "--before", "yesterday", str(tmp_path / "x.gz"), db=database.dsn)
    assert bad.returncode == 2 and "argument --before: not a date" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["later.csv.gz", "raw.csv.gz"]


def test_bad_arguments_are_one_clear_error(database) -> None:
    """
    Bad arguments and an unreachable database give one line each, no
    traceback.
    """
    cases = [
        (["export"], 2, "the following arguments are required: --meter"),
        (["export", "--meter", "x"], 2, "argument --meter: not a meter id"),
        (["export", "--meter", "1", "--from", "5", "--to", "4"], 2, "--from is after --to"),
        (["import", "/nonexistent.csv", "--meter", "1", "--db", database.dsn], 1,
         "blip: error: /nonexistent.csv: No such file or directory"),
        (["export", "--meter", "1", "--db", "nonsense"], 1, "--db: not a connection string or URI"),
        (["upgrade", "--db", "host=a,b dbname=x"], 1, "--db: names several hosts: add target_session_attrs"),
        (["upgrade", "--db", "host=/nonexistent dbname=x"], 1, "blip: error: cannot connect to the database:"),
    ]
    for args, status, message in cases:
        done = blip(*args)
        assert done.returncode == status, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_commands_find_the_daemons_embedded_database(start_daemon, tmp_path) -> None:
    """
    Without --db, the commands (here the installed ``blip`` script) use the
    embedded database of the state dir while a daemon serves it, and say
    what is wrong when none does.
    """
    script = [str(Path(sys.executable).parent / "blip")]
    assert blip("--help", command=script).returncode == 0
    missing = blip("export", "--meter", "1", "--state-dir", str(tmp_path), command=script)
    assert missing.returncode == 1
    assert f"no --db or BLIP_DB given, and there is no embedded database in {tmp_path}/pg" in missing.stderr

    daemon = start_daemon("--simulate")
    state = daemon.args[daemon.args.index("--state-dir") + 1]
    daemon.wait_for("database ready")

    def exported() -> str:
        done = blip("export", "--meter", "1", env={"BLIP_STATE_DIR": state}, command=script)
        return done.stdout if done.returncode == 0 and done.stdout.count("\n") > 1 else ""

    rows = eventually(exported)
    assert rows.startswith("stamp,ms\n"), rows
    assert daemon.stop() == 0
    stopped = blip("export", "--meter", "1", "--state-dir", state, command=script)
    assert stopped.returncode == 1
    assert f"cannot connect to the embedded database in {state}/pg (it runs while the daemon runs)" in stopped.stderr


def test_tokens_are_made_listed_and_revoked(database) -> None:
    """
    ``blip token create`` prints a new token once (and stores only its
    hash), ``list`` shows every token without it, ``revoke`` revokes one by
    id (a second time changes nothing) and refuses an unknown id; bad
    arguments are one line each.
    """
    made = blip("token", "create", "--meter", "3", "--meter", "4", "--name", "cellar pi", db=database.dsn)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    ident, _, secret = token.partition(".")
    assert len(ident) == 12 and len(secret) == 43
    assert f"token {ident} (cellar pi) may write meter(s) 3, 4" in made.stderr
    rows = database.sql("SELECT id, name, meters, revoked FROM device_tokens")
    assert rows == [(ident, "cellar pi", [3, 4], None)]
    assert secret.encode() not in bytes(database.sql("SELECT hash FROM device_tokens")[0][0])
    assert database.sql("SELECT id FROM meters ORDER BY id") == [(3,), (4,)]
    listed = blip("token", "list", db=database.dsn)
    assert listed.returncode == 0 and secret not in listed.stdout
    header, line = listed.stdout.splitlines()
    assert header.split("\t") == ["id", "name", "meters", "created", "revoked"]
    assert line.split("\t")[:3] == [ident, "cellar pi", "3,4"] and line.endswith("\t-")
    revoked = blip("token", "revoke", token, db=database.dsn)
    assert revoked.returncode == 0 and revoked.stdout.startswith(f"token {ident} revoked at ")
    first = database.sql("SELECT revoked FROM device_tokens")[0][0]
    assert blip("token", "revoke", ident, db=database.dsn).stdout == revoked.stdout
    assert database.sql("SELECT revoked FROM device_tokens")[0][0] == first
    assert not blip("token", "list", db=database.dsn).stdout.splitlines()[1].endswith("\t-")
    for args, status, message in (
        (["token", "revoke", "nosuchtoken0"], 1, "no token 'nosuchtoken0'"),
        (["token", "create", "--meter", "1"], 2, "required: --name"),
        (["token", "create", "--name", "x"], 2, "required: --meter"),
        (["token", "create", "--meter", "1", "--name", " "], 2, "a name of 1 to 200"),
    ):
        done = blip(*args, db=database.dsn)
        assert done.returncode == status and message in done.stderr, (args, done.stderr)


def test_repair_fills_history_from_a_peer(start_daemon, database, other_database) -> None:
    """
    ``blip repair`` fills what this database lacks of a range with no
    record of ingest (history) from a peer that has every blink, each blink
    once at both edges though the peer's stamps are 30 ms off; a peer that
    is away fails the repair (status 1, saying why) and records nothing;
    a second run finds the range repaired and stores nothing.
    """

    def blinks(indices, offset: int = 0) -> str:
        return "".join(f"{T0 + i * 1000 + offset},1000\n" for i in indices)

    assert blip("import", "-", "--meter", "1", stdin=blinks([*range(10), *range(21, 41)]), db=database.dsn).returncode == 0
    assert blip("import", "-", "--meter", "1", stdin=blinks(range(41), 30), db=other_database.dsn).returncode == 0
    span = ["--from", str(T0 - 1000), "--to", str(T0 + 41_000)]
    away = blip("repair", "--peer", f"http://127.0.0.1:{free_port()}", *span, db=database.dsn)
    assert away.returncode == 1 and "blip: cannot repair meter 1 from" in away.stderr, away.stderr
    assert database.sql("SELECT count(*) FROM repairs") == [(0,)]
    peer = start_daemon("--db", other_database.dsn, "--role", "web")
    done = blip("repair", "--peer", "http://127.0.0.1:1", "--peer", peer.url("/"), *span, db=database.dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1 stretches repaired, 11 points stored; 0 stretches could not be repaired\n"
    stamps = [s for (s,) in database.sql("SELECT stamp FROM readings ORDER BY stamp")]
    assert [round((s - T0) / 1000) for s in stamps] == list(range(41))
    assert database.sql("SELECT sum(events) FROM readings_hourly") == [(41,)]
    again = blip("repair", "--peer", peer.url("/"), *span, db=database.dsn)
    assert again.stdout.startswith("0 stretches repaired, 0 points stored") and again.returncode == 0
    wrong = blip("repair", "--peer", "ftp://x", *span, db=database.dsn)
    assert wrong.returncode == 1 and wrong.stderr.startswith("blip: error: --peer: expected http://"), wrong.stderr
