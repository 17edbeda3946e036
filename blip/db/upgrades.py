"""
The upgrade steps from the original blipserver's layouts and from
blipserver's plain readings table (see :mod:`blip.db.layouts`) to
blipserver's schema, each a program (see :mod:`blip.db.program`) run in
the transaction that prepares the database (:func:`blip.db.schema.prepare`),
and the statements that recompute the rollups from readings, which the
upgrade from the original's layouts and ``blip rollups rebuild`` both run.
"""

from dataclasses import dataclass
from typing import Sequence

from psycopg2 import sql

from blip.db import layouts, partitions
from blip.db.layouts import WIDTHS, Catalog, Grant, Refused
from blip.db.partitions import DEFAULT_PARTITION, month_of
from blip.db.program import Program, Statement
from blip.db.queries import skip_meters
from blip.model import STAMP_MAX, STAMP_MIN

#: Privileges that may be granted on a view again after it was recreated.
_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"})


def _drop_views() -> Program[None]:
    # The views depend on the columns the steps change; schema.sql makes
    # them again. Without CASCADE: a view of the user's built on them stops
    # the upgrade with PostgreSQL's message, and nothing is changed.
    yield Statement("DROP VIEW IF EXISTS usage_minutely, usage_hourly")


def add_meter_ids(catalog: Catalog, meter: int) -> Program[list[str]]:
    """
    Step 1 to 2: give every row of the single-meter layout a meter id (a
    change of the catalog only: no row is rewritten).
    """
    yield Statement("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
    yield from _drop_views()
    for table in (layouts.READINGS, *catalog.rollups()):
        name = sql.Identifier(table)
        yield Statement(
            sql.SQL("ALTER TABLE {} ADD COLUMN id INTEGER NOT NULL DEFAULT %s").format(name),
            (meter,),
        )
        yield Statement(sql.SQL("ALTER TABLE {} ALTER COLUMN id DROP DEFAULT").format(name))
    return [f"gave every reading and rollup row meter id {meter}"]


def replace_original_rollups(catalog: Catalog) -> Program[list[str]]:
    """
    Step 2 to 3, before ``schema.sql``: drop the original's per-row
    trigger (with blipserver's as well, every row would be counted twice),
    and give readings and the rollups blipserver's types, NOT NULLs and
    keys, in place (their privileges stay).
    """
    notes = []
    yield Statement("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
    dropped: dict[tuple[str, str], int] = {}
    for trigger in catalog.original_triggers():
        yield Statement(
            sql.SQL("DROP TRIGGER {} ON readings").format(sql.Identifier(trigger.name))
        )
        function = (trigger.function_schema, trigger.function)
        dropped[function] = dropped.get(function, 0) + 1
        notes.append(f"dropped the original's per-row trigger {trigger.name}")
    for trigger in catalog.original_triggers():
        function = (trigger.function_schema, trigger.function)
        if dropped.pop(function, None) == trigger.function_uses:
            yield Statement(sql.SQL("DROP FUNCTION {}.{}()").format(*map(sql.Identifier, function)))
            notes.append(f"dropped its function {trigger.function}()")
    others = [t.name for t in catalog.triggers if not t.writes_rollups and not t.is_blips]
    if others:
        notes.append(f"left the other triggers on readings alone ({', '.join(others)})")
    yield from _drop_views()
    names = [c.name for c in catalog.columns[layouts.READINGS] if not c.not_null]
    if "ms" in names:
        gone = (yield Statement("DELETE FROM readings WHERE ms IS NULL")).count
        if gone:
            notes.append(f"deleted {gone} readings without ms")
    notes += yield from _conform(catalog, layouts.READINGS, layouts.READINGS_TYPES)
    for table in catalog.rollups():
        gone = (yield Statement(sql.SQL(
            "DELETE FROM {} WHERE events IS NULL OR sum_ms IS NULL OR min_ms IS NULL"
            " OR max_ms IS NULL OR events <= 0 OR sum_ms <= 0"
        ).format(sql.Identifier(table)))).count
        if gone:
            notes.append(f"deleted {gone} incomplete rows of {table}")
        notes += yield from _conform(catalog, table, layouts.ROLLUP_TYPES)
    if not catalog.has("readings_minutely"):
        notes.append("created readings_minutely")
    return notes


def _conform(catalog: Catalog, table: str, types: dict[str, str]) -> Program[list[str]]:
    """
    Give a table's columns blipserver's types and NOT NULLs (one ALTER, so
    at most one rewrite) and its primary key ``(id, stamp)``.
    """
    notes = []
    changes = []
    for column in catalog.columns[table]:
        name = sql.Identifier(column.name)
        target = types[column.name]
        if column.type != target:
            changes.append(sql.SQL("ALTER COLUMN {} TYPE " + target).format(name))
            wider = target == "bigint" or column.type == "smallint"
            notes.append(f"{'widened' if wider else 'changed'} {table}.{column.name} to {target.upper()}")
        if not column.not_null:
            changes.append(sql.SQL("ALTER COLUMN {} SET NOT NULL").format(name))
    table_name = sql.Identifier(table)
    if changes:
        yield Statement(sql.SQL("ALTER TABLE {} ").format(table_name) + sql.SQL(", ").join(changes))
    key = catalog.primary_keys.get(table)
    if key is None or key[1] != ("id", "stamp"):
        if key is not None:
            yield Statement(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table_name, sql.Identifier(key[0]))
            )
        yield Statement(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, stamp)").format(table_name))
        notes.append(f"keyed {table} by (id, stamp)")
    return notes


@dataclass(frozen=True, slots=True)
class Aside:
    """
    The plain readings table, renamed to become the partition of everything
    before the month after the upgrade.

    :param name: its new name.
    :param boundary: unix ms the month after the upgrade starts: it holds
        every stamp below.
    :param owner: the role that owned it, and will own readings.
    """

    name: str
    boundary: int
    owner: str


_READERS_OF_READINGS = (
    "SELECT DISTINCT v.relname::text FROM pg_depend d"
    "  JOIN pg_rewrite r ON r.oid = d.objid"
    "  JOIN pg_class v ON v.oid = r.ev_class"
    " WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass"
    "   AND d.refobjid = 'readings'::regclass AND v.oid <> 'readings'::regclass"
    " ORDER BY 1"
)
_OWNER = "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'readings'::regclass"
# The points from the boundary on, found through the primary key one meter
# at a time (a plain condition on stamp would read the table).
_MOVE_LATER = (
    ", moved AS ("
    "   DELETE FROM {table} r USING m WHERE r.id = m.id AND r.stamp >= %s::bigint"
    "   RETURNING r.id, r.stamp, r.ms)"
    " INSERT INTO {default} (id, stamp, ms) SELECT id, stamp, ms FROM moved"
)


def set_readings_aside(now: int) -> Program[Aside]:
    """
    Step 3 to 4, before ``schema.sql`` (which then makes readings a
    partitioned table): rename the plain readings table and its primary key
    to ``readings_before_YYYY_MM``, the month after ``now``, and take
    blipserver's rollup trigger off it (the partitioned table's counts its
    points).

    :param now: unix ms of the upgrade.
    :raise blip.db.layouts.Refused: when a view reads readings: it would
        go on reading the old table alone.
    """
    views = [name for name, in (yield Statement(_READERS_OF_READINGS)).rows]
    if views:
        raise Refused(
            f"readings is read by {', '.join(views)} (views of yours), which would go on reading the"
            " old table alone once readings is partitioned by month: drop them, upgrade, then make"
            " them again"
        )
    owner = (yield Statement(_OWNER)).rows[0][0]
    boundary = month_of(now).after(1)
    aside = Aside(f"readings_before_{boundary.label}", boundary.start, owner)
    yield Statement("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
    key = (yield Statement(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'readings'::regclass AND contype = 'p'"
    )).rows[0][0]
    name = sql.Identifier(aside.name)
    yield Statement("DROP TRIGGER IF EXISTS blip_rollup ON readings")
    yield Statement(sql.SQL("ALTER TABLE readings RENAME TO {}").format(name))
    yield Statement(
        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(key), sql.Identifier(aside.name + "_pkey")
        )
    )
    return aside


def attach_readings_aside(aside: Aside) -> Program[list[str]]:
    """
    Step 3 to 4, after ``schema.sql`` made readings a partitioned table:
    attach the old table as the partition of every stamp below the
    boundary, without rewriting a row. A constraint checked by one read of
    the table proves its points belong there, so that attaching it reads
    nothing more; points from the boundary on (a clock far ahead) move to
    the default partition first. The old table's owner owns readings.
    """
    made = yield from partitions.ensure_default()
    table = sql.Identifier(aside.name)
    # The name is our own: a plain identifier.
    move = sql.SQL(skip_meters(aside.name) + _MOVE_LATER)
    later = (yield Statement(
        move.format(table=table, default=sql.Identifier(DEFAULT_PARTITION)), (aside.boundary,)
    )).count
    check = sql.Identifier(aside.name + "_stamp")
    yield Statement(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (stamp < %s::bigint) NOT VALID").format(table, check),
        (aside.boundary,),
    )
    yield Statement(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(table, check))
    yield Statement(
        sql.SQL("ALTER TABLE readings ATTACH PARTITION {} FOR VALUES FROM (MINVALUE) TO (%s)").format(table),
        (aside.boundary,),
    )
    yield Statement(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, check))
    yield Statement(sql.SQL("ALTER TABLE readings OWNER TO {}").format(sql.Identifier(aside.owner)))
    notes = [
        f"made readings a table partitioned by month, its points until now the partition {aside.name}"
        " (not rewritten)",
        *made,
    ]
    if later:
        month = month_of(aside.boundary)
        notes.append(
            f"moved {later} points stamped {month.year:04d}-{month.month:02d} or later (a clock ahead)"
            f" to {DEFAULT_PARTITION}"
        )
    return notes


def grant_again(grants: Sequence[Grant]) -> Program[list[str]]:
    """
    Give the views and the readings table that the upgrade recreated the
    privileges they had (a dashboard's read-only role, say).
    """
    count = 0
    for grant in grants:
        if grant.privilege not in _PRIVILEGES:
            continue
        role = sql.SQL("PUBLIC") if grant.role is None else sql.Identifier(grant.role)
        yield Statement(
            sql.SQL("GRANT " + grant.privilege + " ON {} TO {}").format(sql.Identifier(grant.relation), role)
        )
        count += 1
    return [f"granted {count} privileges on readings and the views again"] if count else []


def recompute_rollups() -> Program[list[str]]:
    """
    Step 2 to 3, after ``schema.sql``: recompute both rollups from readings
    for every meter. Rows older than a meter's first reading (history whose
    readings were deleted) are kept.
    """
    every = {"meter": None, "start": STAMP_MIN, "end": STAMP_MAX}
    counts = []
    for statement in rebuild_statements():
        counts.append((yield Statement(statement, every)).count)
    kept = []
    for table, width in WIDTHS.items():
        rows = (yield Statement(_HISTORY_ALL.format(table=sql.Identifier(table), width=sql.Literal(width)))).rows
        if rows[0][0]:
            kept.append(f"kept {rows[0][0]} rows of {table} older than the first reading")
    minutes, stale_minutes, hours, stale_hours = counts
    return [
        f"recomputed the rollups from readings ({minutes} minute and {hours} hour rows"
        f" written or corrected, {stale_minutes + stale_hours} without readings removed)",
        *kept,
    ]


# Rollups are recomputed from readings by these four statements, for one
# meter or all (meter NULL) and a range of stamps: minutes from readings,
# then hours from those minutes, each followed by removing rows whose bucket
# has no readings or is not aligned. Rows whose bucket ends at or before
# the meter's first reading are history and never touched. Only rows that
# change are written, so their counts say how many were wrong.
_CHANGED_ONLY = (
    " ON CONFLICT (id, stamp) DO UPDATE"
    "    SET events = excluded.events, sum_ms = excluded.sum_ms,"
    "        min_ms = excluded.min_ms, max_ms = excluded.max_ms"
    "  WHERE (t.events, t.sum_ms, t.min_ms, t.max_ms) IS DISTINCT FROM"
    "        (excluded.events, excluded.sum_ms, excluded.min_ms, excluded.max_ms)"
)
_MINUTES_FROM_READINGS = sql.SQL(
    "INSERT INTO readings_minutely AS t (id, stamp, events, sum_ms, min_ms, max_ms)"
    " SELECT id, stamp - stamp %% 60000, count(*), sum(ms), min(ms), max(ms)"
    "   FROM readings"
    "  WHERE (%(meter)s::integer IS NULL OR id = %(meter)s)"
    "    AND stamp >= %(start)s::bigint AND stamp < %(end)s::bigint"
    "  GROUP BY 1, 2"
    + _CHANGED_ONLY
)
_HOURS_FROM_MINUTES = sql.SQL(
    "INSERT INTO readings_hourly AS t (id, stamp, events, sum_ms, min_ms, max_ms)"
    " SELECT id, stamp - stamp %% 3600000, sum(events), sum(sum_ms), min(min_ms), max(max_ms)"
    "   FROM readings_minutely m"
    "  WHERE (%(meter)s::integer IS NULL OR id = %(meter)s)"
    "    AND stamp >= %(start)s::bigint AND stamp < %(end)s::bigint"
    "    AND stamp + 60000 > (SELECT min(r.stamp) FROM readings r WHERE r.id = m.id)"
    "  GROUP BY 1, 2"
    + _CHANGED_ONLY
)
_STALE = sql.SQL(
    "DELETE FROM {table} t"
    " WHERE (%(meter)s::integer IS NULL OR t.id = %(meter)s)"
    "   AND t.stamp >= %(start)s::bigint AND t.stamp < %(end)s::bigint"
    "   AND t.stamp + {width} > (SELECT min(r.stamp) FROM readings r WHERE r.id = t.id)"
    "   AND (t.stamp %% {width} <> 0"
    "        OR NOT EXISTS (SELECT 1 FROM readings r WHERE r.id = t.id"
    "                        AND r.stamp >= t.stamp AND r.stamp < t.stamp + {width}))"
)
_HISTORY_ALL = sql.SQL(
    "SELECT count(*) FROM {table} t"
    " WHERE t.stamp + {width} <= coalesce("
    "       (SELECT min(r.stamp) FROM readings r WHERE r.id = t.id), 9223372036854775807)"
)


def rebuild_statements() -> list[sql.Composable]:
    """
    :return: the four statements that recompute the rollups, in order.
    """
    return [
        _MINUTES_FROM_READINGS,
        _STALE.format(table=sql.Identifier("readings_minutely"), width=sql.Literal(60_000)),
        _HOURS_FROM_MINUTES,
        _STALE.format(table=sql.Identifier("readings_hourly"), width=sql.Literal(3_600_000)),
    ]

