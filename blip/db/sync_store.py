"""
The statements the ``blip`` command runs (upgrade, rollups, import,
export, archive), on a plain blocking psycopg2 connection: the command
runs without a reactor. Preparing the database and making partitions are
the daemon's own programs (:func:`blip.db.schema.prepare`,
:mod:`blip.db.partitions`), run by the blocking runner.
"""

import io
import time
from typing import IO, Any, NamedTuple, Optional, Protocol, Sequence

from psycopg2 import sql

from blip.db import layouts
from blip.db.layouts import WIDTHS, Outcome
from blip.db.node_state import NOTE_METER, meter_row
from blip.db.partitions import ensure_months, raw_since
from blip.db.program import run_sync
from blip.db.queries import METERS_WITH_ROLLUPS
from blip.db.schema import prepare, read_catalog
from blip.db.tokens import CREATE, LIST, REVOKE, NewToken, TokenRow, token_row
from blip.db.upgrades import rebuild_statements
from blip.meters import Meter
from blip.model import DEFAULT_METER

# Every meter with readings or with rollups.
_METER_IDS = (
    METERS_WITH_ROLLUPS
    + " SELECT id FROM m WHERE id IS NOT NULL"
    " UNION SELECT id FROM readings_minutely"
    " ORDER BY 1"
)
_SPAN = (
    "SELECT (SELECT min(stamp) FROM readings WHERE id = %(m)s),"
    "       (SELECT max(stamp) FROM readings WHERE id = %(m)s),"
    "       greatest((SELECT max(stamp) FROM readings_minutely WHERE id = %(m)s),"
    "                (SELECT max(stamp) FROM readings_hourly WHERE id = %(m)s))"
)
_MISMATCHES = sql.SQL(
    "WITH counted AS ("
    "  SELECT stamp - stamp %% {width} AS stamp, count(*) AS events, sum(ms) AS sum_ms,"
    "         min(ms) AS min_ms, max(ms) AS max_ms"
    "    FROM readings"
    "   WHERE id = %(meter)s AND stamp >= %(start)s::bigint AND stamp < %(end)s::bigint"
    "   GROUP BY 1),"
    " stored AS ("
    "  SELECT stamp, events, sum_ms, min_ms, max_ms FROM {table}"
    "   WHERE id = %(meter)s AND stamp >= %(start)s::bigint AND stamp < %(end)s::bigint"
    "     AND stamp + {width} > %(first)s::bigint)"
    " SELECT coalesce(c.stamp, s.stamp), c.events, c.sum_ms, c.min_ms, c.max_ms,"
    "        s.events, s.sum_ms, s.min_ms, s.max_ms"
    "   FROM counted c FULL JOIN stored s ON s.stamp = c.stamp"
    "  WHERE (c.events, c.sum_ms, c.min_ms, c.max_ms) IS DISTINCT FROM"
    "        (s.events, s.sum_ms, s.min_ms, s.max_ms)"
    "  ORDER BY 1"
)
_HISTORY = sql.SQL(
    "SELECT count(*) FROM {table} WHERE id = %(meter)s AND stamp + {width} <= %(first)s::bigint"
)
_IMPORT_TABLE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS blip_import"
    " (stamp BIGINT NOT NULL, ms INTEGER NOT NULL) ON COMMIT DELETE ROWS"
)
_IMPORT_COPY = "COPY blip_import (stamp, ms) FROM STDIN"
_IMPORT = (
    "INSERT INTO readings (id, stamp, ms)"
    " SELECT %s, stamp, ms FROM blip_import ORDER BY stamp"
    " ON CONFLICT DO NOTHING"
)
_EXPORT = (
    "SELECT stamp, ms FROM readings"
    " WHERE id = %s AND stamp >= %s::bigint AND stamp <= %s::bigint ORDER BY stamp"
)
_ARCHIVE = "SELECT id AS meter, stamp, ms FROM readings WHERE stamp < %s::bigint ORDER BY id, stamp"



class Extent(NamedTuple):
    """
    How far a meter's readings and rollups reach.

    :param first: the stamp of its first reading.
    :param last: the stamp of its last reading.
    :param rolled: the stamp of its last rollup bucket.

    Each is None when there is none.
    """

    first: Optional[int]
    last: Optional[int]
    rolled: Optional[int]


class Rebuilt(NamedTuple):
    """
    What a rebuild of the rollups changed.

    :param minutes: minute rows written, corrected or removed.
    :param hours: hour rows written, corrected or removed.
    """

    minutes: int
    hours: int


class Counts(NamedTuple):
    """
    The blips of one rollup bucket; all None where there is no row.

    :param events: how many blips.
    :param sum_ms: the sum of their ms.
    :param min_ms: the shortest ms.
    :param max_ms: the longest ms.
    """

    events: Optional[int]
    sum_ms: Optional[int]
    min_ms: Optional[int]
    max_ms: Optional[int]


class Mismatch(NamedTuple):
    """
    A rollup bucket whose row does not match a recount of readings.

    :param stamp: unix ms the bucket starts.
    :param counted: the bucket counted from readings.
    :param stored: the bucket as the rollup table holds it.
    """

    stamp: int
    counted: Counts
    stored: Counts

class Writable(Protocol):
    """Where COPY writes its rows: anything with a ``write`` of bytes."""

    def write(self, data: bytes, /) -> object:
        """Take the next bytes."""


class SyncStore:
    """
    The statements the commands run, on a plain (blocking) psycopg2
    connection; each method is one transaction.

    :param connection: an open psycopg2 connection, not in autocommit.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def apply_schema(self, meter: int = DEFAULT_METER, now: Optional[int] = None) -> Outcome:
        """
        Prepare the database exactly as the daemon does at start (see
        :meth:`blip.db.schema.Schema.apply`).

        :param now: unix ms [default: the current time].
        """
        with self.connection, self.connection.cursor() as cursor:
            return run_sync(cursor, prepare(meter, _now() if now is None else now))

    def layout(self) -> Optional[int]:
        """
        Tell the database's layout without changing anything.

        :return: its schema version, or None when it is empty.
        :raise blip.db.layouts.Refused: for a database blipserver cannot use.
        """
        with self.connection, self.connection.cursor() as cursor:
            return layouts.detect(run_sync(cursor, read_catalog()))

    def raw_since(self) -> Optional[int]:
        """
        :return: the unix ms before which raw points were dropped, or None
            when none were.
        """
        with self.connection, self.connection.cursor() as cursor:
            return run_sync(cursor, raw_since())

    def meter_ids(self) -> list[int]:
        """
        :return: the id of every meter with readings or rollups.
        """
        return [row[0] for row in self._rows(_METER_IDS)]

    def span(self, meter: int) -> Extent:
        """
        :return: how far the meter's readings and rollups reach.
        """
        return Extent._make(self._rows(_SPAN, {"m": meter})[0])

    def rebuild(self, meter: int, start: int, end: int) -> Rebuilt:
        """
        Recompute a meter's rollups from its readings with ``start <= stamp <
        end`` (hour-aligned) in one transaction. Writers of readings wait
        meanwhile, so none of their rows is missed or counted twice.

        :return: how many minute and hour rows were written, corrected or
            removed.
        """
        params = {"meter": meter, "start": start, "end": end}
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute("LOCK TABLE readings IN SHARE ROW EXCLUSIVE MODE")
            counts = []
            for statement in rebuild_statements():
                cursor.execute(statement, params)
                counts.append(cursor.rowcount)
        return Rebuilt(counts[0] + counts[1], counts[2] + counts[3])

    def mismatches(self, table: str, meter: int, start: int, end: int, first: int) -> list[Mismatch]:
        """
        Compare a rollup table with a recount of readings, for one meter and
        ``start <= stamp < end``; buckets ending at or before ``first`` (the
        meter's first reading) are history and left out.

        :return: each bucket where they differ, by stamp.
        """
        statement = _MISMATCHES.format(table=sql.Identifier(table), width=sql.Literal(WIDTHS[table]))
        rows = self._rows(statement, {"meter": meter, "start": start, "end": end, "first": first})
        return [Mismatch(row[0], Counts._make(row[1:5]), Counts._make(row[5:9])) for row in rows]

    def history(self, table: str, meter: int, first: int) -> int:
        """
        :return: how many rows of a rollup table are history: their bucket
            ends at or before ``first``, the meter's first reading.
        """
        statement = _HISTORY.format(table=sql.Identifier(table), width=sql.Literal(WIDTHS[table]))
        return int(self._rows(statement, {"meter": meter, "first": first})[0][0])

    def note_meter(self, meter: Meter) -> None:
        """
        Add a meter to the meters table unless it is there.
        """
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute(NOTE_METER, meter_row(meter))

    def import_points(self, meter: int, points: Sequence[tuple[int, int]]) -> int:
        """
        Store ``(stamp, ms)`` points of one meter in one transaction, skipping
        those already stored; the rollup trigger counts the new ones. The
        partitions of their months are made first, so that they land there
        rather than in the default partition.

        :return: how many were new.
        """
        text = "".join(f"{stamp}\t{ms}\n" for stamp, ms in points)
        with self.connection, self.connection.cursor() as cursor:
            run_sync(cursor, ensure_months(None, (stamp for stamp, _ in points)))
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute(_IMPORT_TABLE)
            cursor.copy_expert(_IMPORT_COPY, io.StringIO(text))
            cursor.execute(_IMPORT, (meter,))
            return int(cursor.rowcount)

    def export(self, meter: int, first: int, last: int, out: IO[bytes]) -> None:
        """
        Write a meter's points with ``first <= stamp <= last`` to ``out`` as
        CSV with a ``stamp,ms`` header, oldest first. PostgreSQL streams the
        rows (COPY), so memory stays constant for any range.
        """
        with self.connection, self.connection.cursor() as cursor:
            query = cursor.mogrify(_EXPORT, (meter, first, last)).decode()
            cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)", out)

    def create_token(self, token: NewToken) -> None:
        """
        Store a new device token (its hash, never the token).
        """
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute(CREATE, token.row)

    def tokens(self) -> list[TokenRow]:
        """
        :return: every device token, newest first.
        """
        return [token_row(row) for row in self._rows(LIST)]

    def revoke_token(self, ident: str, now: int) -> Optional[int]:
        """
        Revoke a device token: from now on it authorises nothing.

        :return: when it was revoked (earlier, if it already was), or None
            when there is no such token.
        """
        rows = self._rows(REVOKE, (now, ident))
        return None if not rows else int(rows[0][0])
    def archive(self, before: int, out: Writable) -> int:
        """
        Write every raw point with a stamp below ``before`` to ``out`` as
        CSV with a ``meter,stamp,ms`` header, by meter and stamp, in one
        snapshot. PostgreSQL streams the rows (COPY), so memory stays
        constant however many there are.

        :return: how many points were written.
        """
        with self.connection, self.connection.cursor() as cursor:
            query = cursor.mogrify(_ARCHIVE, (before,)).decode()
            cursor.copy_expert(
                f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)", out
            )
            return int(cursor.rowcount)

    def _rows(self, statement: Any, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute(statement, params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows


def _now() -> int:
    """:return: the current unix time in ms."""
    return int(time.time() * 1000)
