"""
The ``blip`` command (also ``python -m blip``): work on blipserver's
database beside the daemon, or without it.

::

    blip upgrade                                   prepare the database as the daemon does at start
    blip rollups rebuild [--meter ID] [--from MS] [--to MS]
    blip rollups check   [--meter ID] [--from MS] [--to MS]
    blip import FILE.csv --meter ID                FILE may be - for standard input
    blip export --meter ID [--from MS] [--to MS]   CSV on standard output
    blip archive --before DATE FILE.csv.gz         every raw point before DATE, before --keep-raw drops it
    blip token create --meter ID [--meter ID ...] --name NAME   prints a new token once
    blip token list
    blip token revoke TOKEN-ID
    blip repair --peer URL [--peer URL ...] --from MS --to MS [--meter ID] [--token-file FILE]

Each finds the database as the daemon does: ``--db`` or ``BLIP_DB``, else
the embedded cluster under ``--state-dir`` (``BLIP_STATE_DIR``, ``./var``),
which a daemon must be running. Commands that write (``upgrade``,
``import``, ``rollups rebuild``, ``token create``, ``repair``) first
prepare the database exactly as the daemon does at start (creating or
upgrading its schema); those that only read want it prepared already. They
are not the daemon: they use plain blocking psycopg2, and their SQL lives
in :mod:`blip.db.sync_store` all the same; ``repair`` alone runs the
daemon's own repair (:mod:`blip.remote.repair`) on a reactor of its own.
"""

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import psycopg2
import psycopg2.extensions

from blip.cli import rollups, transfer
from blip.cli.repair import repair_once
from blip.common.env import env_name
from blip.db import hosts
from blip.db.embedded import Cluster, EmbeddedError
from blip.db.layouts import LAYOUTS, SCHEMA_VERSION, Refused
from blip.db.sync_store import SyncStore
from blip.db.tokens import new_token
from blip.meters import default_meter
from blip.model import INT_MAX, STAMP_MAX
from blip.remote.client import UrlError, base_url, read_token


class CommandError(Exception):
    """
    The command cannot do its work; the message says why.
    """


def _meter(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > INT_MAX:
        raise argparse.ArgumentTypeError(f"not a meter id (0 to {INT_MAX}): {text!r}")
    return int(text)


def _name(text: str) -> str:
    if not text.strip() or len(text) > 200 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"a name of 1 to 200 printable characters, not {text[:40]!r}")
    return text.strip()


def _stamp(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > STAMP_MAX:
        raise argparse.ArgumentTypeError(f"not a unix time in ms: {text!r}")
    return int(text)


def _instant(text: str) -> int:
    if text.isascii() and text.isdigit():
        return _stamp(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date (2024-01-31, 2024-01-31T12:00+01:00; UTC without an offset) or unix ms: {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def parser() -> argparse.ArgumentParser:
    """
    :return: the command line's parser.
    """
    database = argparse.ArgumentParser(add_help=False)
    where = database.add_argument_group("database")
    where.add_argument(
        "--db", metavar="DSN",
        help="libpq connection string or URI of PostgreSQL, the daemon's (for a primary"
             " with standbys: host=a,b ... target_session_attrs=read-write) [default:"
             " $BLIP_DB, else the embedded database of --state-dir, which a running daemon"
             " serves]",
    )
    where.add_argument(
        "--state-dir", metavar="DIR", type=Path,
        help="the daemon's state dir, for its embedded database [default: $BLIP_STATE_DIR or ./var]",
    )
    span = argparse.ArgumentParser(add_help=False)
    span.add_argument("--from", dest="first", metavar="MS", type=_stamp,
                      help="first stamp (unix ms) [default: the first reading]")
    span.add_argument("--to", dest="last", metavar="MS", type=_stamp,
                      help="last stamp (unix ms) [default: the last reading]")

    top = argparse.ArgumentParser(
        prog="blip",
        description="Work on blipserver's database: upgrade it, rebuild or check the rollups,"
                    " import or export points as CSV, archive raw points.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    upgrade = commands.add_parser(
        "upgrade", parents=[database],
        help="create or upgrade the schema, as the daemon does at start",
        description="Create blipserver's schema in an empty database or upgrade the original"
                    " blipserver's in place, as the daemon does at start.",
    )
    upgrade.set_defaults(run=run_upgrade)

    group = commands.add_parser("rollups", help="rebuild or check the minute and hour rollups")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, run, summary, text in (
        ("rebuild", run_rebuild, "recompute the rollups from readings",
         "Recompute the rollups from readings, one day per transaction, for the whole hours"
         " covering --from to --to. Rows older than a meter's first reading stay."),
        ("check", run_check, "report rollup rows that do not match readings",
         "Report every rollup row that does not match a recount of readings; exit 1 if any."),
    ):
        action = actions.add_parser(name, parents=[database, span], help=summary, description=text)
        action.add_argument("--meter", type=_meter, metavar="ID", help="only this meter [default: all]")
        action.set_defaults(run=run)

    load = commands.add_parser(
        "import", parents=[database], help="import points from CSV",
        description="Import stamp,ms lines (header optional) into a meter's readings. Points"
                    " already stored are skipped; bad lines are reported with their number and"
                    " skipped; exit 1 if there were any.",
    )
    load.add_argument("file", metavar="FILE.csv", help="the CSV file, or - for standard input")
    load.add_argument("--meter", type=_meter, metavar="ID", required=True)
    load.set_defaults(run=run_import)

    dump = commands.add_parser(
        "export", parents=[database, span], help="export points as CSV",
        description="Write a meter's points with --from <= stamp <= --to as stamp,ms CSV"
                    " (with a header) to standard output, oldest first.",
    )
    dump.add_argument("--meter", type=_meter, metavar="ID", required=True)
    dump.set_defaults(run=run_export)

    keep = commands.add_parser(
        "archive", parents=[database], help="write raw points before a date to compressed CSV",
        description="Write every meter's raw points with a stamp before --before to FILE, a new"
                    " gzip-compressed CSV file (meter,stamp,ms with a header, by meter and stamp),"
                    " before the daemon's --keep-raw drops them. The points stay in the database.",
    )
    keep.add_argument("file", metavar="FILE.csv.gz", type=Path, help="the file to write (must not exist)")
    keep.add_argument(
        "--before", type=_instant, metavar="DATE", required=True,
        help="the first instant left out: a date or date-time (ISO 8601; UTC without an offset)"
             " or unix ms",
    )
    keep.set_defaults(run=run_archive)
    tokens = commands.add_parser("token", help="make, list or revoke device tokens of the write API")
    token_actions = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_actions.add_parser(
        "create", parents=[database], help="make a token and print it (once)",
        description="Make a device token that may write the given meters through"
                    " POST /api/v1/meters/<id>/readings, and print it: it is shown this once"
                    " (only its hash is stored).",
    )
    create.add_argument("--meter", type=_meter, metavar="ID", required=True, action="append",
                        help="a meter it may write; repeat for several")
    create.add_argument("--name", required=True, type=_name, help="what it is for (the device)")
    create.set_defaults(run=run_token_create)
    listing = token_actions.add_parser(
        "list", parents=[database], help="list the tokens (never the tokens themselves)",
        description="List every device token: id, name, meters, when made and revoked.",
    )
    listing.set_defaults(run=run_token_list)
    revoke = token_actions.add_parser(
        "revoke", parents=[database], help="revoke a token",
        description="Revoke a device token: from now on it writes nothing.",
    )
    revoke.add_argument("id", metavar="TOKEN-ID", help="the token's id (before its dot, or as listed)")
    revoke.set_defaults(run=run_token_revoke)

    repair = commands.add_parser(
        "repair", parents=[database], help="fill gaps with a peer logger's points, once",
        description="Fill the stretches of --from to --to when no logger of this database was"
                    " listening (and those before its first record of ingest: history) with the"
                    " points of a peer blipserver reading the same meter, as the daemon's --peer"
                    " does; stretches repaired before are left alone.",
    )
    repair.add_argument("--peer", metavar="URL", required=True, action="append",
                        help="the peer (http:// or https://, where it is served); repeat to try several")
    repair.add_argument("--token-file", metavar="FILE", help="a bearer token sent to the peers")
    repair.add_argument("--from", dest="first", metavar="MS", type=_stamp, required=True)
    repair.add_argument("--to", dest="last", metavar="MS", type=_stamp, required=True)
    repair.add_argument("--meter", type=_meter, metavar="ID", action="append",
                        help="only this meter; repeat for several [default: every meter]")
    repair.set_defaults(run=run_repair)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Run one command.

    :return: the exit status.
    """
    cli = parser()
    args = cli.parse_args(argv)
    if getattr(args, "first", None) is not None and getattr(args, "last", None) is not None:
        if args.first > args.last:
            cli.error("--from is after --to")
    try:
        with connected(args) as connection:
            run: Callable[[SyncStore, Any], int] = args.run
            return run(SyncStore(connection), args)
    except CommandError as e:
        return _fail(str(e))
    except Refused as e:
        return _fail(f"refusing to use the database: {e}; nothing was changed")
    except psycopg2.Error as e:
        return _fail("; ".join(line.strip() for line in str(e).splitlines() if line.strip()))
    except BrokenPipeError:
        sys.stderr.close()
        return 1
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"blip: error: {message}", file=sys.stderr)
    return 1


def dsn_of(args: Any) -> tuple[str, str]:
    """
    Find the database: ``--db``, ``BLIP_DB``, or the embedded cluster of
    the state dir.

    :return: its connection string, and what to call it in errors.
    :raise CommandError: when there is none to be found.
    """
    dsn = args.db or os.environ.get(env_name("db"))
    if dsn:
        try:
            psycopg2.extensions.parse_dsn(dsn)
        except psycopg2.ProgrammingError:
            # psycopg2's message quotes the string, password and all.
            raise CommandError(
                "--db: not a connection string or URI (key=value ... or postgresql://...)"
            ) from None
        if hosts.may_reach_a_standby(dsn):
            raise CommandError(f"--db: {hosts.SEVERAL_HOSTS}")
        return dsn, "the database"
    state = args.state_dir or Path(os.environ.get(env_name("state-dir")) or "./var")
    root = state / "pg"
    if not (root / "data" / "PG_VERSION").is_file():
        raise CommandError(
            f"no --db or {env_name('db')} given, and there is no embedded database in {root}"
        )
    try:
        cluster = Cluster.at(root)
    except EmbeddedError as e:
        raise CommandError(str(e)) from None
    return cluster.dsn(), f"the embedded database in {root} (it runs while the daemon runs)"


@contextmanager
def connected(args: Any) -> Iterator[Any]:
    """
    :return: a context with an open connection to the database.
    :raise CommandError: when it cannot be reached.
    """
    dsn, name = dsn_of(args)
    try:
        connection = psycopg2.connect(dsn)
    except psycopg2.OperationalError as e:
        why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CommandError(f"cannot connect to {name}: {why}") from None
    try:
        yield connection
    finally:
        connection.close()


def prepared(store: SyncStore) -> None:
    """
    Prepare the database as the daemon does at start, saying so on
    standard error if that changed anything.
    """
    outcome = store.apply_schema()
    if outcome.changed or outcome.notes:
        print(f"blip: {outcome.describe()}", file=sys.stderr)


def current(store: SyncStore) -> None:
    """
    :raise CommandError: unless the database has blipserver's schema.
    """
    version = store.layout()
    if version != SCHEMA_VERSION:
        raise CommandError(
            f"the database has {LAYOUTS[version]}, not {LAYOUTS[SCHEMA_VERSION]}:"
            " run `blip upgrade` or start the daemon first"
        )


def run_upgrade(store: SyncStore, args: Any) -> int:
    """``blip upgrade``."""
    print(store.apply_schema().describe())
    return 0


def run_rebuild(store: SyncStore, args: Any) -> int:
    """``blip rollups rebuild``."""
    prepared(store)
    return rollups.rebuild(store, args.meter, args.first, args.last, sys.stdout)


def run_check(store: SyncStore, args: Any) -> int:
    """``blip rollups check``."""
    current(store)
    return rollups.check(store, args.meter, args.first, args.last, sys.stdout)


def run_import(store: SyncStore, args: Any) -> int:
    """``blip import``."""
    prepared(store)
    store.note_meter(default_meter(args.meter))
    if args.file == "-":
        return transfer.import_csv(store, args.meter, sys.stdin, "<stdin>", sys.stdout, sys.stderr)
    try:
        lines = open(args.file, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as e:
        raise CommandError(f"{args.file}: {e.strerror}") from None
    with lines:
        return transfer.import_csv(store, args.meter, lines, args.file, sys.stdout, sys.stderr)


def run_archive(store: SyncStore, args: Any) -> int:
    """``blip archive``."""
    current(store)
    try:
        points = transfer.archive_csv(store, args.before, args.file)
    except transfer.ArchiveError as e:
        raise CommandError(str(e)) from None
    print(f"{args.file}: {points} raw points before {rollups.when(args.before)}")
    dropped = store.raw_since()
    if dropped is not None:
        print(
            f"(raw points before {rollups.when(dropped)} were dropped already:"
            " the archive holds what was left of them)"
        )
    return 0


def run_export(store: SyncStore, args: Any) -> int:
    """``blip export``."""
    current(store)
    first = args.first if args.first is not None else 0
    last = args.last if args.last is not None else STAMP_MAX
    transfer.export_csv(store, args.meter, first, last, sys.stdout.buffer)
    sys.stdout.flush()
    return 0


def _now() -> int:
    return int(time.time() * 1000)


def _when(ms: Optional[int]) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def run_token_create(store: SyncStore, args: Any) -> int:
    """``blip token create``."""
    prepared(store)
    for meter in args.meter:
        store.note_meter(default_meter(meter))
    made = new_token(args.name, args.meter, _now())
    store.create_token(made)
    print(made.token)
    meters = ", ".join(map(str, sorted(set(args.meter))))
    print(
        f"blip: token {made.token.partition('.')[0]} ({args.name}) may write meter(s) {meters};"
        " this is the only time it is shown",
        file=sys.stderr,
    )
    return 0


def run_token_list(store: SyncStore, args: Any) -> int:
    """``blip token list``."""
    current(store)
    print("id\tname\tmeters\tcreated\trevoked")
    for row in store.tokens():
        meters = ",".join(map(str, row.meters))
        print(f"{row.id}\t{row.name}\t{meters}\t{_when(row.created)}\t{_when(row.revoked)}")
    return 0


def run_token_revoke(store: SyncStore, args: Any) -> int:
    """``blip token revoke``."""
    current(store)
    ident = args.id.partition(".")[0]
    revoked = store.revoke_token(ident, _now())
    if revoked is None:
        raise CommandError(f"no token {ident!r} (see blip token list)")
    print(f"token {ident} revoked at {_when(revoked)}")
    return 0


def run_repair(store: SyncStore, args: Any) -> int:
    """``blip repair``."""
    prepared(store)
    if args.first >= args.last:
        raise CommandError("--from must be before --to")
    try:
        peers = [base_url(url) for url in args.peer]
    except UrlError as e:
        raise CommandError(f"--peer: {e}") from None
    try:
        token = None if args.token_file is None else read_token(args.token_file, "--token-file")
    except UrlError as e:
        raise CommandError(str(e)) from None
    meters = args.meter or store.meter_ids()
    dsn, _ = dsn_of(args)
    outcome = repair_once(dsn, peers, token, meters, args.first, args.last)
    for problem in outcome.problems:
        print(f"blip: cannot repair {problem}", file=sys.stderr)
    print(
        f"{outcome.repaired} stretches repaired, {outcome.points} points stored;"
        f" {outcome.failed} stretches could not be repaired"
    )
    return 0 if outcome.done else 1
