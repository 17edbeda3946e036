"""
Preparing the database at start, by the daemon and the ``blip`` command
alike: read the catalog, tell its layout (:mod:`blip.db.layouts`), upgrade
older layouts in place (:mod:`blip.db.upgrades`), apply ``schema.sql``
(which changes nothing where it is already applied), make the partitions
of readings due (:mod:`blip.db.partitions`) and record the version; all in
one transaction, as one program (see :mod:`blip.db.program`).
"""

import functools
from pathlib import Path
from typing import Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from blip.db import layouts, partitions, upgrades
from blip.db.layouts import Catalog, Column, Grant, Outcome, Trigger
from blip.db.pool import Pool
from blip.db.program import Program, Statement, run_in
from blip.model import DEFAULT_METER

#: Key of the advisory lock that serialises schema changes between nodes.
SCHEMA_LOCK = 0x626C6970  # "blip"


@functools.cache
def schema_sql() -> str:
    """
    :return: the text of ``schema.sql``, read once: the daemon reads it when
        it is built, before twistd --uid/--gid make it a user who may not
        be able to read it.
    """
    # Read beside this module rather than through importlib.resources, which
    # loads more of Python's library on first use.
    return Path(__file__).parent.parent.joinpath("schema.sql").read_text(encoding="utf-8")


class Schema:
    """
    Brings the database to blipserver's schema.

    :param pool: the connections to run the preparation on.
    :param clock: the current time, which tells the month whose partition
        is due (the pool's reactor when None).
    """

    log = Logger()

    def __init__(self, pool: Pool, clock: Optional[IReactorTime] = None) -> None:
        self.pool = pool
        self.clock = clock or pool.reactor

    async def apply(self, meter: int = DEFAULT_METER) -> Outcome:
        """
        Bring the database to blipserver's schema in one transaction (see
        :func:`prepare`: create, upgrade the original's layouts in place,
        or find it current), holding a lock so that nodes starting together
        take turns, and log what was done.

        :param meter: the meter the rows of a single-meter database belong
            to.
        :raise blip.db.layouts.Refused: for a database that is neither empty,
            blipserver's nor the original's; it is left untouched.
        """
        started = self.pool.reactor.seconds()
        outcome = await run_in(self.pool, prepare(meter, int(self.clock.seconds() * 1000)))
        self.log.info(
            "{outcome} ({seconds:.1f} s)",
            outcome=outcome.describe(),
            seconds=self.pool.reactor.seconds() - started,
        )
        return outcome


_RELATIONS = (
    "SELECT c.relname::text, c.relkind::text FROM pg_class c"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
)
_COLUMNS = (
    "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),"
    "       a.attnotnull"
    "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relname::text = ANY(%s)"
    "   AND a.attnum > 0 AND NOT a.attisdropped"
    " ORDER BY c.relname, a.attnum"
)
_PRIMARY_KEYS = (
    "SELECT c.relname::text, k.conname::text,"
    "       array(SELECT a.attname::text"
    "               FROM unnest(k.conkey) WITH ORDINALITY u(num, i)"
    "               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.num"
    "              ORDER BY u.i)"
    "  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE k.contype = 'p' AND n.nspname = current_schema()"
    "   AND c.relname::text = ANY(%s)"
)
_TRIGGERS = (
    "SELECT t.tgname::text, fn.nspname::text, f.proname::text,"
    "       f.prosrc ~* 'readings_(hourly|minutely)',"
    "       (SELECT count(*) FROM pg_trigger o WHERE o.tgfoid = t.tgfoid)"
    "  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    "  JOIN pg_proc f ON f.oid = t.tgfoid"
    "  JOIN pg_namespace fn ON fn.oid = f.pronamespace"
    " WHERE n.nspname = current_schema() AND c.relname = 'readings'"
    "   AND NOT t.tgisinternal"
    " ORDER BY t.tgname"
)
_GRANTS = (
    "SELECT c.relname::text,"
    "       CASE WHEN g.grantee = 0 THEN NULL ELSE pg_get_userbyid(g.grantee)::text END,"
    "       g.privilege_type"
    "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,"
    "       aclexplode(c.relacl) g"
    " WHERE n.nspname = current_schema() AND c.relname::text = ANY(%s)"
    "   AND g.grantee <> c.relowner"
    " ORDER BY 1, 2, 3"
)
_VERSION = "SELECT max(version) FROM blip_schema"
_RECORD_VERSION = (
    "INSERT INTO blip_schema (version, applied, note)"
    " VALUES (%s, (extract(epoch FROM now()) * 1000)::bigint, %s)"
    " ON CONFLICT (version) DO NOTHING"
)


def read_catalog() -> Program[Catalog]:
    """
    Read what :func:`blip.db.layouts.detect` needs to know.
    """
    known = list(layouts.KNOWN)
    relations: dict[str, str] = dict((yield Statement(_RELATIONS)).rows)
    columns: dict[str, list[Column]] = {}
    for table, name, type_, not_null in (yield Statement(_COLUMNS, (known,))).rows:
        columns.setdefault(table, []).append(Column(name, type_, not_null))
    keys = {
        table: (name, tuple(names))
        for table, name, names in (yield Statement(_PRIMARY_KEYS, (known,))).rows
    }
    triggers = tuple(Trigger(*row) for row in (yield Statement(_TRIGGERS)).rows)
    grants = tuple(
        Grant(*row) for row in (yield Statement(_GRANTS, ([*layouts.VIEWS, layouts.READINGS],))).rows
    )
    version = None
    if "blip_schema" in relations:
        version = (yield Statement(_VERSION)).rows[0][0]
    return Catalog(
        relations, {t: tuple(c) for t, c in columns.items()}, keys, triggers, grants, version
    )


def prepare(meter: int, now: int) -> Program[Outcome]:
    """
    Bring the database to blipserver's schema, in the caller's transaction:
    create it in an empty database, upgrade older layouts in place (ordered
    steps, from the version found), apply ``schema.sql`` (which changes
    nothing where it is already applied), make the partitions of readings
    due, and record the version.

    :param meter: the meter the rows of a single-meter database belong to.
    :param now: unix ms: the month whose partition is due, and the months
        after it.
    :raise blip.db.layouts.Refused: before changing anything, for a database
        that is not one of these.
    """
    yield Statement("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
    # An upgrade of years of readings takes minutes: a statement timeout
    # set for the role would cancel it at every start.
    yield Statement("SET LOCAL statement_timeout = 0")
    catalog = yield from read_catalog()
    before = layouts.detect(catalog)
    original = before in (layouts.ORIGINAL_SINGLE, layouts.ORIGINAL_MULTI)
    plain = before is not None and catalog.plain_readings()
    grants = catalog.grants
    notes: list[str] = []
    if before == layouts.ORIGINAL_SINGLE:
        notes += yield from upgrades.add_meter_ids(catalog, meter)
        catalog = yield from read_catalog()
    if original:
        notes += yield from upgrades.replace_original_rollups(catalog)
    if plain:
        aside = yield from upgrades.set_readings_aside(now)
    yield Statement(schema_sql())
    if plain:
        notes += yield from upgrades.attach_readings_aside(aside)
    if original or plain:
        notes += yield from upgrades.grant_again(grants)
    if original:
        notes += yield from upgrades.recompute_rollups()
    notes += yield from partitions.ensure_months(now)
    if catalog.version != layouts.SCHEMA_VERSION:
        note = LAYOUTS_NOTE.get(before, "created")
        yield Statement(_RECORD_VERSION, (layouts.SCHEMA_VERSION, note))
        if before == layouts.SCHEMA_VERSION:
            notes.append("recorded its version")
    return Outcome(before, tuple(notes))


#: What the version row says of where the schema came from.
LAYOUTS_NOTE = {
    None: "created",
    layouts.ORIGINAL_SINGLE: "upgraded from the original single-meter layout",
    layouts.ORIGINAL_MULTI: "upgraded from the original multi-meter layout",
    layouts.UNPARTITIONED: "upgraded from a plain readings table to one partitioned by month",
    layouts.SCHEMA_VERSION: "recorded for a database made before versions were recorded",
}
