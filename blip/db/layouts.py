"""
Which layout a database has, and so which upgrade steps it needs.

blipserver's schema is version :data:`SCHEMA_VERSION` of one lineage whose
earlier versions are the original blipserver's layouts:

1. the older single-meter layout: ``readings (stamp, ms)`` and rollup tables
   without ``id``, kept by a per-row trigger;
2. the multi-meter layout: ``readings (id, stamp, ms)``, ``readings_hourly
   (id, stamp, events, sum_ms, min_ms, max_ms)`` with an INTEGER ``sum_ms``,
   kept by a per-row trigger;
3. blipserver's own with a plain ``readings`` table: BIGINT ``sum_ms``,
   minute rollups, the statement-level ``blip_rollup`` trigger, meters;
4. blipserver's own (``schema.sql``): the same, with ``readings``
   partitioned by month (see :mod:`blip.db.partitions`).

A database blipserver has prepared records its version in ``blip_schema``;
any other is recognised here from its catalog. The SQL that reads the
catalog lives in :mod:`blip.db.schema`, the steps in :mod:`blip.db.upgrades`;
this module only decides, so that it can be tested without a database.
"""

from dataclasses import dataclass
from typing import Optional

#: The version of ``schema.sql``.
SCHEMA_VERSION = 4
#: The original's older single-meter layout.
ORIGINAL_SINGLE = 1
#: The original's multi-meter layout.
ORIGINAL_MULTI = 2
#: blipserver's schema with a plain readings table.
UNPARTITIONED = 3

LAYOUTS = {
    None: "an empty database",
    ORIGINAL_SINGLE: "the original single-meter layout (version 1)",
    ORIGINAL_MULTI: "the original multi-meter layout (version 2)",
    UNPARTITIONED: f"blipserver's schema with a plain readings table (version {UNPARTITIONED})",
    SCHEMA_VERSION: f"blipserver's schema (version {SCHEMA_VERSION})",
}

#: The tables and views blipserver reads or keeps, whose shape is checked.
READINGS = "readings"
#: The relation kinds of a plain and of a partitioned table.
PLAIN, PARTITIONED = "r", "p"
ROLLUPS = ("readings_minutely", "readings_hourly")
VIEWS = ("usage_minutely", "usage_hourly")
OWN = ("meters", "ingest_periods", "blip_schema")
KNOWN = (READINGS, *ROLLUPS, *VIEWS, *OWN)

#: Bucket widths of the rollups, in ms.
MINUTE, HOUR = 60_000, 3_600_000
#: Widths of the rollups' buckets in ms, by table.
WIDTHS = {"readings_minutely": MINUTE, "readings_hourly": HOUR}

#: The name of blipserver's rollup trigger and of its function.
ROLLUP_TRIGGER = "blip_rollup"

#: The column types blipserver's tables end up with.
READINGS_TYPES = {"id": "integer", "stamp": "bigint", "ms": "integer"}
ROLLUP_TYPES = {
    "id": "integer", "stamp": "bigint", "events": "integer",
    "sum_ms": "bigint", "min_ms": "integer", "max_ms": "integer",
}
#: The columns of blipserver's meters table.
METERS_COLUMNS = frozenset(
    {"id", "label", "description", "pulses_per_kwh", "multiplier",
     "price_per_kwh", "currency", "timezone"}
)
_INTEGERS = frozenset({"smallint", "integer", "bigint"})
_TABLE_KINDS = frozenset({PLAIN, PARTITIONED})


class Refused(Exception):
    """
    The database is not one blipserver may use or upgrade; the message says
    why. Nothing has been changed.
    """


@dataclass(frozen=True, slots=True)
class Column:
    """
    One column of a table or view.

    :param name: its name.
    :param type: its type as ``format_type`` prints it (``bigint``).
    :param not_null: whether it has a NOT NULL constraint.
    """

    name: str
    type: str
    not_null: bool


@dataclass(frozen=True, slots=True)
class Trigger:
    """
    A trigger on ``readings``.

    :param name: the trigger's name.
    :param function_schema: the schema of the function it runs.
    :param function: the function's name.
    :param writes_rollups: whether the function's source names a rollup
        table (the original's per-row trigger does).
    :param function_uses: how many triggers in the database run the function.
    """

    name: str
    function_schema: str
    function: str
    writes_rollups: bool
    function_uses: int

    @property
    def is_blips(self) -> bool:
        """Whether this is blipserver's own rollup trigger."""
        return self.name == ROLLUP_TRIGGER and self.function == ROLLUP_TRIGGER


@dataclass(frozen=True, slots=True)
class Grant:
    """
    A privilege someone other than the owner holds on a view or table that
    the upgrade recreates (the views, readings).

    :param relation: the view or table.
    :param role: the grantee, or None for PUBLIC.
    :param privilege: ``SELECT``, ``INSERT``, ...
    """

    relation: str
    role: Optional[str]
    privilege: str


@dataclass(frozen=True, slots=True)
class Catalog:
    """
    What the database holds, as far as telling layouts apart needs.

    :param relations: name to ``relkind`` of every table, view, sequence...
        in the current schema.
    :param columns: the columns of each of :data:`KNOWN` that exists, in
        order.
    :param primary_keys: for each of :data:`KNOWN` that has one, the
        constraint's name and columns.
    :param triggers: the triggers on ``readings``.
    :param grants: privileges on the views and readings held by roles
        other than their owner.
    :param version: the highest version in ``blip_schema``, if that table
        exists and has rows.
    """

    relations: dict[str, str]
    columns: dict[str, tuple[Column, ...]]
    primary_keys: dict[str, tuple[str, tuple[str, ...]]]
    triggers: tuple[Trigger, ...]
    grants: tuple[Grant, ...]
    version: Optional[int]

    def has(self, name: str) -> bool:
        """:return: whether a relation called ``name`` exists."""
        return name in self.relations

    def column_names(self, name: str) -> set[str]:
        """:return: the names of a relation's columns."""
        return {c.name for c in self.columns.get(name, ())}

    def plain_readings(self) -> bool:
        """:return: whether readings is a plain table, not partitioned."""
        return self.relations.get(READINGS) == PLAIN

    def rollups(self) -> list[str]:
        """:return: the rollup tables that exist, minute before hour."""
        return [t for t in ROLLUPS if self.has(t)]

    def original_triggers(self) -> list[Trigger]:
        """:return: the triggers on readings that write rollups and are not
        blipserver's: they must go, or rows would be counted twice."""
        return [t for t in self.triggers if t.writes_rollups and not t.is_blips]


def detect(catalog: Catalog) -> Optional[int]:
    """
    Tell which layout the database has.

    :return: None for an empty database, else its schema version (1 and 2
        are the original's layouts).
    :raise Refused: for a database blipserver must not touch.
    """
    if catalog.has("blip_schema"):
        version = catalog.version
        if version is None:
            raise Refused("its blip_schema table is empty, so its layout is unknown")
        if version > SCHEMA_VERSION:
            raise Refused(
                f"its schema is version {version}, written by a newer blipserver;"
                f" this one knows versions up to {SCHEMA_VERSION}: upgrade blipserver"
            )
        return version
    if not catalog.relations:
        return None
    if not catalog.has(READINGS):
        raise Refused(
            f"it is not empty ({_listing(catalog.relations)}) and has no readings table,"
            " so it is neither blipserver's nor the original blipserver's"
        )
    _check_kinds(catalog)
    readings = catalog.column_names(READINGS)
    if readings == {"stamp", "ms"}:
        has_id = False
    elif readings == {"id", "stamp", "ms"}:
        has_id = True
    else:
        raise Refused(
            f"its readings table has columns ({', '.join(sorted(readings))});"
            " the original's has (stamp, ms) or (id, stamp, ms)"
        )
    _check_integers(catalog, READINGS)
    expected = set(ROLLUP_TYPES) if has_id else set(ROLLUP_TYPES) - {"id"}
    for table in catalog.rollups():
        if catalog.column_names(table) != expected:
            raise Refused(
                f"its {table} table has columns"
                f" ({', '.join(sorted(catalog.column_names(table)))});"
                f" expected ({', '.join(sorted(expected))})"
            )
        _check_integers(catalog, table)
    if catalog.has("meters") and catalog.column_names("meters") != METERS_COLUMNS:
        raise Refused("it has a meters table that is not blipserver's")
    if not has_id:
        return ORIGINAL_SINGLE
    if _is_blips(catalog):
        return UNPARTITIONED if catalog.plain_readings() else SCHEMA_VERSION
    return ORIGINAL_MULTI


def _is_blips(catalog: Catalog) -> bool:
    """
    A multi-meter database is blipserver's own (made before the schema was
    versioned) when blipserver's trigger alone keeps both rollups and they
    have blipserver's types.
    """
    if not any(t.is_blips for t in catalog.triggers) or catalog.original_triggers():
        return False
    return all(
        catalog.has(table)
        and {c.name: c.type for c in catalog.columns[table]} == ROLLUP_TYPES
        for table in ROLLUPS
    )


def _check_kinds(catalog: Catalog) -> None:
    for name in (READINGS, *ROLLUPS, "meters"):
        if catalog.has(name) and catalog.relations[name] not in _TABLE_KINDS:
            raise Refused(f"its {name} is not a table")
    for name in VIEWS:
        if catalog.has(name) and catalog.relations[name] != "v":
            raise Refused(f"its {name} is not a view")


def _check_integers(catalog: Catalog, table: str) -> None:
    for column in catalog.columns[table]:
        if column.type not in _INTEGERS:
            raise Refused(
                f"its column {table}.{column.name} is {column.type}, not an integer"
            )


def _listing(names: dict[str, str], most: int = 5) -> str:
    shown = sorted(names)[:most]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    What preparing the database did.

    :param before: the version found (None: the database was empty).
    :param notes: what each step did, in order, for the log.
    """

    before: Optional[int]
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the layout was created or upgraded."""
        return self.before != SCHEMA_VERSION

    def describe(self) -> str:
        """:return: one sentence for the log."""
        target = LAYOUTS[SCHEMA_VERSION]
        if self.before is None:
            return f"created {target} in an empty database"
        if self.before == SCHEMA_VERSION:
            return f"the database has {target}" + (
                f" ({'; '.join(self.notes)})" if self.notes else ""
            )
        return (
            f"upgraded the database in place from {LAYOUTS[self.before]} to {target}: "
            + "; ".join(self.notes)
        )
