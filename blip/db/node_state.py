"""
What the nodes record besides readings: the ``meters`` table (each meter's
settings, shared by every node) and the ``ingest_periods`` table (when each
node ingested with its source open).
"""

from typing import Any, NamedTuple, Optional, Sequence

from blip.db.pool import Pool
from blip.meters import Meter

_METER_COLUMNS = "id, label, description, pulses_per_kwh, multiplier, price_per_kwh, currency, timezone"
_SAVE_METERS = (
    f"INSERT INTO meters AS m ({_METER_COLUMNS})"
    " SELECT * FROM unnest(%s::integer[], %s::text[], %s::text[], %s::float8[],"
    "                      %s::float8[], %s::float8[], %s::text[], %s::text[])"
    " ON CONFLICT (id) DO UPDATE"
    "    SET label = excluded.label,"
    "        description = CASE WHEN excluded.description <> '' THEN excluded.description"
    "                           ELSE m.description END,"
    "        pulses_per_kwh = excluded.pulses_per_kwh, multiplier = excluded.multiplier,"
    "        price_per_kwh = excluded.price_per_kwh, currency = excluded.currency,"
    "        timezone = excluded.timezone"
)
#: Add a meter unless the table has it, and take its description if it has
#: a new one; the parameters are :func:`meter_row`.
NOTE_METER = (
    f"INSERT INTO meters AS m ({_METER_COLUMNS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET description = excluded.description"
    "  WHERE excluded.description <> '' AND excluded.description <> m.description"
)
_METERS = f"SELECT {_METER_COLUMNS} FROM meters ORDER BY id"
_METER_FIELDS = [name.strip() for name in _METER_COLUMNS.split(",")]


def meter_row(meter: Meter) -> tuple[Any, ...]:
    """
    :return: a meter's settings as a row of the meters table.
    """
    return tuple(getattr(meter, name) for name in _METER_FIELDS)


def _meter_columns(meters: Sequence[Meter]) -> tuple[list[Any], ...]:
    return tuple([getattr(m, name) for m in meters] for name in _METER_FIELDS)


def _meter(row: tuple[Any, ...]) -> Meter:
    return Meter(**dict(zip(_METER_FIELDS, row)))


class MeterRows:
    """
    The rows of the meters table.

    :param pool: the connections to run statements on.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def save_meters(self, meters: Sequence[Meter]) -> None:
        """
        Write the settings of configured meters, replacing those stored; a
        stored description stays unless the meter has one of its own.
        """
        await self.pool.runOperation(_SAVE_METERS, _meter_columns(meters))

    async def note_meter(self, meter: Meter) -> None:
        """
        Record a meter seen on the serial line (with the given settings if
        it is new) and its description, if it has one.
        """
        await self.pool.runOperation(NOTE_METER, meter_row(meter))

    async def meters(self) -> list[Meter]:
        """
        :return: every meter of the meters table, by id.
        """
        return [_meter(row) for row in await self.pool.runQuery(_METERS)]


class IngestSpan(NamedTuple):
    """
    When one node ingested with its source open.

    :param started: unix ms the period started.
    :param until: unix ms it ended (or its node was last known alive).
    """

    started: int
    until: int


class IngestPeriods:
    """
    The rows of the ingest periods table: written by ingest, read for the
    gaps of ``/api/v1`` and for the repair of gaps from a peer (see
    :mod:`blip.ingest.downtime`).

    :param pool: the connections to run statements on.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def save_ingest_period(
        self,
        node: str,
        started: int,
        alive_at: int,
        ended: Optional[int],
        end_reason: Optional[str],
    ) -> None:
        """
        Record a period of ``node`` ingesting with its source open, or
        update it: ``alive_at`` only moves forward, and an end, once
        recorded, stays.
        """
        await self.pool.runOperation(
            "INSERT INTO ingest_periods AS p (node, started, alive_at, ended, end_reason)"
            " VALUES (%s, %s::bigint, %s::bigint, %s::bigint, %s)"
            " ON CONFLICT (node, started) DO UPDATE"
            "   SET alive_at = greatest(p.alive_at, excluded.alive_at),"
            "       ended = coalesce(p.ended, excluded.ended),"
            "       end_reason = coalesce(p.end_reason, excluded.end_reason)",
            (node, started, alive_at, ended, end_reason),
        )

    async def end_crashed_ingest_periods(self, node: str, before: int) -> int:
        """
        Close the periods of ``node`` that started before ``before`` and
        were never closed (the node was killed or lost power): they end at
        their last ``alive_at``, for reason ``crash``.

        :return: how many were closed.
        """
        rows = await self.pool.runQuery(
            "WITH closed AS ("
            " UPDATE ingest_periods SET ended = alive_at, end_reason = 'crash'"
            "  WHERE node = %s AND ended IS NULL AND started < %s::bigint"
            " RETURNING 1)"
            " SELECT count(*) FROM closed",
            (node, before),
        )
        return int(rows[0][0])

    async def ingest_periods(
        self, first: int, last: int, now: Optional[int] = None, fresh: int = 0
    ) -> list[IngestSpan]:
        """
        :return: every period of any node when ingest ran with its source
            open that overlaps ``[first, last]``, by start; a period still
            open ends at its ``alive_at``, or at ``now`` if that is at most
            ``fresh`` ms before (its node runs).
        """
        rows = await self.pool.runQuery(
            "SELECT started, until FROM ("
            " SELECT started,"
            "        CASE WHEN ended IS NULL AND alive_at >= %(now)s::bigint - %(fresh)s::bigint"
            "             THEN greatest(alive_at, %(now)s::bigint)"
            "             ELSE coalesce(ended, alive_at) END AS until"
            "   FROM ingest_periods WHERE started <= %(last)s::bigint) AS p"
            " WHERE until >= %(first)s::bigint ORDER BY started",
            {"first": first, "last": last, "now": now, "fresh": fresh},
        )
        return list(map(IngestSpan._make, rows))

    async def first_ingest(self) -> Optional[int]:
        """
        :return: when the first recorded period of ingest started (any
            node), or None: before it nothing says whether a logger ran.
        """
        rows = await self.pool.runQuery("SELECT min(started) FROM ingest_periods")
        return None if rows[0][0] is None else int(rows[0][0])
