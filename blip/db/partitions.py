"""
The readings by month: ``readings`` is partitioned by range of ``stamp``,
one partition per UTC month (``readings_YYYY_MM``), made ahead of time, and
a default partition (``readings_default``) that takes any point outside
every partition (a spool written long after, a clock far off); the
partition made for a month takes the default's points of that month with
it. A database converted from a plain table has one more partition,
``readings_before_YYYY_MM``, holding everything before that month (see
:mod:`blip.db.upgrades`).

With ``--keep-raw``, whole partitions older than the retention are
detached and dropped, and recorded in ``readings_dropped``; the minute and
hour rollups stay. :func:`raw_since` is then the instant before which raw
points were dropped.

Each change is a program (see :mod:`blip.db.program`), run by the daemon
(:class:`Partitions`) and the ``blip`` command alike, under an advisory
lock so that nodes take turns.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, NamedTuple, Optional

from psycopg2 import sql
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip.db.pool import RETRIABLE, Pool
from blip.db.program import Program, Statement, run_in

#: Key of the advisory lock that serialises changes of the partitions.
PARTITION_LOCK = 0x626C6971
#: Months made ahead of the current one.
MONTHS_AHEAD = 2
#: Seconds between two turns of keeping the partitions (and reading since
#: when raw points are kept, which another node may have changed).
KEEP_INTERVAL = 600.0
#: The partition of points outside every other.
DEFAULT_PARTITION = "readings_default"
#: Most months made in one transaction (from stray points of the default
#: partition); the rest are made at the next turn.
MOST_MONTHS = 48
#: How long dropping a partition waits for the queries on readings to let
#: it in; everything that comes after waits as long, so it gives up early
#: and tries again at the next turn.
DROP_LOCK_TIMEOUT = "3s"


@dataclass(frozen=True, slots=True, order=True)
class Month:
    """
    A UTC month.

    :param year: its year.
    :param month: its number, 1 to 12.
    """

    year: int
    month: int

    @property
    def start(self) -> int:
        """Unix ms it starts."""
        return int(datetime(self.year, self.month, 1, tzinfo=timezone.utc).timestamp()) * 1000

    @property
    def end(self) -> int:
        """Unix ms the next one starts."""
        return self.after(1).start

    @property
    def label(self) -> str:
        """``YYYY_MM``."""
        return f"{self.year:04d}_{self.month:02d}"

    @property
    def name(self) -> str:
        """The name of its partition."""
        return f"readings_{self.label}"

    def after(self, months: int) -> "Month":
        """:return: the month ``months`` later (earlier when negative)."""
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)


def month_of(stamp: int) -> Month:
    """
    :return: the UTC month of unix ms ``stamp`` (years 1 to 9999).
    """
    moment = datetime.fromtimestamp(stamp // 1000, timezone.utc)
    return Month(moment.year, moment.month)


#: Partitions are made for the months from 1970 to November 9999 (whose
#: ends Python's dates can name); points outside stay in the default one.
FIRST_STAMP, END_STAMP = Month(1970, 1).start, Month(9999, 12).start


def in_months(stamp: int) -> bool:
    """:return: whether ``stamp`` falls in a month partitions are made for."""
    return FIRST_STAMP <= stamp < END_STAMP


@dataclass(frozen=True, slots=True)
class Partition:
    """
    A partition of readings.

    :param name: its table.
    :param low: the first stamp it holds; None from the lowest.
    :param high: the stamp after the last it holds; None to the highest.
    :param default: whether it is the default partition (low and high are
        then None, and mean nothing).
    """

    name: str
    low: Optional[int]
    high: Optional[int]
    default: bool = False

    def overlaps(self, low: int, high: int) -> bool:
        """:return: whether it holds some stamps of ``[low, high)``."""
        if self.default:
            return False
        return (self.low is None or self.low < high) and (self.high is None or low < self.high)


_BOUND = re.compile(r"^FOR VALUES FROM \((MINVALUE|'-?\d+')\) TO \((MAXVALUE|'-?\d+')\)$")


def parse_bound(name: str, bound: str) -> Partition:
    """
    :param bound: the partition's bound as ``pg_get_expr`` prints it
        (``FOR VALUES FROM ('1') TO ('2')``, ``DEFAULT``).
    :raise ValueError: for a bound that is not a range of stamps.
    """
    if bound == "DEFAULT":
        return Partition(name, None, None, default=True)
    match = _BOUND.match(bound)
    if match is None:
        raise ValueError(f"partition {name} of readings has bounds {bound!r}, not a range of stamps")

    def value(text: str) -> Optional[int]:
        return None if text.endswith("VALUE") else int(text.strip("'"))

    return Partition(name, value(match.group(1)), value(match.group(2)))


class Dropped(NamedTuple):
    """
    A partition of raw points dropped.

    :param name: its table.
    :param low: its first stamp, None from the lowest.
    :param high: the stamp after its last.
    :param rows: the points it held.
    """

    name: str
    low: Optional[int]
    high: int
    rows: int


_PARTITIONS = (
    "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)"
    "  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'readings'::regclass"
    " ORDER BY 1"
)
_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"
_RAW_SINCE = "SELECT max(to_stamp) FROM readings_dropped"
_DEFAULT_MONTHS = (
    "SELECT DISTINCT (extract(epoch FROM date_trunc('month',"
    "        to_timestamp(stamp / 1000) AT TIME ZONE 'UTC')) * 1000)::bigint"
    "  FROM readings_default"
    " WHERE stamp >= %s::bigint AND stamp < %s::bigint"
)
# Whether the default partition holds points of some months (their
# bounds, as an array of start, end pairs).
_DEFAULT_HOLDS = (
    "SELECT EXISTS (SELECT 1 FROM readings_default d, unnest(%s::bigint[], %s::bigint[]) AS m (low, high)"
    "                WHERE d.stamp >= m.low AND d.stamp < m.high)"
)
_MOVE = (
    "WITH moved AS ("
    " DELETE FROM readings_default WHERE stamp >= %s::bigint AND stamp < %s::bigint"
    " RETURNING id, stamp, ms)"
    " INSERT INTO {} (id, stamp, ms) SELECT id, stamp, ms FROM moved"
)
_RECORD_DROP = (
    "INSERT INTO readings_dropped (partition, from_stamp, to_stamp, rows, dropped)"
    " VALUES (%s, %s::bigint, %s::bigint, %s::bigint, %s::bigint)"
)


def read_partitions() -> Program[list[Partition]]:
    """
    :return: the partitions of readings, by name.
    """
    rows = (yield Statement(_PARTITIONS)).rows
    return [parse_bound(name, bound) for name, bound in rows]


def raw_since() -> Program[Optional[int]]:
    """
    :return: the instant before which raw points were dropped (the end of
        the newest range dropped), or None when none were.
    """
    value = (yield Statement(_RAW_SINCE)).rows[0][0]
    return None if value is None else int(value)


def ensure_default() -> Program[list[str]]:
    """
    Make the default partition unless it exists.
    """
    if (yield Statement(_EXISTS, (DEFAULT_PARTITION,))).rows[0][0]:
        return []
    yield Statement(
        sql.SQL("CREATE TABLE {} PARTITION OF readings DEFAULT").format(sql.Identifier(DEFAULT_PARTITION))
    )
    return [f"made the default partition {DEFAULT_PARTITION}"]


def ensure_months(now: Optional[int], stamps: Iterable[int] = ()) -> Program[list[str]]:
    """
    Make the partitions of the months of ``stamps`` and, given ``now``, of
    the current month and the :data:`MONTHS_AHEAD` after it, and of the
    months up to those the default partition holds points of; each unless
    a partition holds some of its stamps already (or raw points of that
    month were dropped). A new month's partition takes the default's
    points of that month, in the same transaction.

    :param now: unix ms, or None for the months of ``stamps`` alone.
    :param stamps: stamps whose months want a partition (points about to
        be written).
    :return: what was done, for the log.
    """
    yield Statement("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
    yield Statement("SET LOCAL statement_timeout = 0")
    notes = yield from ensure_default()
    wanted = {month_of(s) for s in stamps if in_months(s)}
    if now is not None:
        current = month_of(now)
        wanted |= {current.after(i) for i in range(MONTHS_AHEAD + 1)}
        rows = (yield Statement(_DEFAULT_MONTHS, (FIRST_STAMP, current.after(MONTHS_AHEAD).end))).rows
        wanted |= {month_of(int(start)) for start, in rows}
    partitions = yield from read_partitions()
    dropped_before = yield from raw_since()
    made: list[str] = []
    moved = 0
    skipped = []
    months: list[Month] = []
    for month in sorted(wanted):
        if len(months) >= MOST_MONTHS:
            break
        if any(p.overlaps(month.start, month.end) for p in partitions):
            continue
        if dropped_before is not None and month.end <= dropped_before:
            continue
        if (yield Statement(_EXISTS, (month.name,))).rows[0][0]:
            skipped.append(month.name)
            continue
        months.append(month)
    if months:
        # Writers wait, and then route their points with the new partitions
        # (a point routed to the default partition before a partition of its
        # month is attached would fail its constraint after).
        yield Statement("LOCK TABLE readings IN SHARE ROW EXCLUSIVE MODE")
        if (yield Statement(_DEFAULT_HOLDS, _spans(months))).rows[0][0]:
            # Readers wait too while points move out of the default
            # partition: one planned before the move and reading after it
            # would find them neither there nor in a partition it knows.
            yield Statement("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        yield Statement(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(DEFAULT_PARTITION))
        )
    for month in months:
        moved += yield from _make_month(month)
        made.append(month.name)
    if made:
        notes.append(
            f"made the partition{'s' if len(made) > 1 else ''} {', '.join(made)}"
            + (f" and moved {moved} points of the default partition into them" if moved else "")
        )
    if skipped:
        notes.append(
            f"left {', '.join(skipped)} alone: a table of that name exists, and is not a partition"
            f" of readings (the points of its month stay in {DEFAULT_PARTITION})"
        )
    return notes


def _spans(months: list[Month]) -> tuple[list[int], list[int]]:
    """:return: the starts and the ends of ``months``."""
    return [m.start for m in months], [m.end for m in months]


def _make_month(month: Month) -> Program[int]:
    """
    Make a month's partition: a table that takes the default partition's
    points of the month (already counted by the rollups, so they are moved
    without firing the rollup trigger), then attached.

    :return: how many points it took.
    """
    name = sql.Identifier(month.name)
    yield Statement(sql.SQL("CREATE TABLE {} (LIKE readings INCLUDING ALL)").format(name))
    moved = (yield Statement(sql.SQL(_MOVE).format(name), (month.start, month.end))).count
    yield Statement(
        sql.SQL("ALTER TABLE readings ATTACH PARTITION {} FOR VALUES FROM (%s) TO (%s)").format(name),
        (month.start, month.end),
    )
    return moved


def drop_partition(name: str, cutoff: int, now: int) -> Program[Optional[Dropped]]:
    """
    Detach and drop one partition of raw points if it lies wholly before
    ``cutoff``, and record it in ``readings_dropped``; the rollups stay.

    :param now: unix ms, recorded as when it was dropped.
    :return: what was dropped, or None when it was not (it is gone, or it
        reaches ``cutoff``).
    """
    yield Statement("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
    yield Statement("SET LOCAL statement_timeout = 0")
    yield Statement("SET LOCAL lock_timeout = %s", (DROP_LOCK_TIMEOUT,))
    found = [p for p in (yield from read_partitions()) if p.name == name]
    if not found or found[0].default or found[0].high is None or found[0].high > cutoff:
        return None
    low, high = found[0].low, found[0].high
    table = sql.Identifier(name)
    # Writers of this partition wait while it is counted; readings stay
    # open to everyone else until the detach, which is short.
    yield Statement(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(table))
    rows = int((yield Statement(sql.SQL("SELECT count(*) FROM {}").format(table))).rows[0][0])
    yield Statement(sql.SQL("ALTER TABLE readings DETACH PARTITION {}").format(table))
    yield Statement(sql.SQL("DROP TABLE {}").format(table))
    yield Statement(_RECORD_DROP, (name, low, high, rows, now))
    return Dropped(name, low, high, rows)


def older_than(partitions: Iterable[Partition], cutoff: int) -> list[Partition]:
    """
    :return: the partitions (but the default) wholly before ``cutoff``,
        oldest first.
    """
    old = [p for p in partitions if not p.default and p.high is not None and p.high <= cutoff]
    return sorted(old, key=lambda p: p.high or 0)


_DURATION = re.compile(r"^\s*(\d{1,6})\s*(d|w|mo|y)\s*$")
_UNITS = {"d": "day", "w": "week", "mo": "month", "y": "year"}
DAY = 86_400_000


@dataclass(frozen=True, slots=True)
class KeepRaw:
    """
    How long raw points are kept (``--keep-raw``).

    :param count: how many units.
    :param unit: ``d`` (days), ``w`` (weeks), ``mo`` (calendar months) or
        ``y`` (calendar years).
    """

    count: int
    unit: str

    def cutoff(self, now: int) -> int:
        """
        :return: the instant ``now`` (unix ms) less the duration: raw
            points wholly older than it may go.
        """
        if self.unit in ("d", "w"):
            return now - self.count * DAY * (7 if self.unit == "w" else 1)
        months = self.count * (12 if self.unit == "y" else 1)
        moment = datetime.fromtimestamp(now / 1000, timezone.utc)
        target = month_of(now).after(-months)
        day = min(moment.day, (target.end - target.start) // DAY)
        earlier = moment.replace(year=target.year, month=target.month, day=day)
        return int(earlier.timestamp() * 1000)

    def describe(self) -> str:
        """:return: the duration in words (``18 months``)."""
        return f"{self.count} {_UNITS[self.unit]}{'s' if self.count != 1 else ''}"


def parse_keep_raw(text: str) -> KeepRaw:
    """
    :param text: a duration: a number and a unit, ``400d``, ``8w``,
        ``18mo``, ``2y``.
    :raise ValueError: saying what is wrong.
    """
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"not a duration (a number of d, w, mo or y: 400d, 18mo, 2y): {text!r}")
    keep = KeepRaw(int(match.group(1)), match.group(2))
    if keep.count == 0:
        raise ValueError("must keep raw points for more than 0 days")
    return keep


class Partitions:
    """
    Keeps the partitions of readings: this month's and the next ones made
    ahead of time (and those of stray points in the default partition),
    and, with a retention, whole partitions older than it dropped. Knows
    since when raw points are kept, for the routes that return them.

    :param pool: the connections to work on.
    :param clock: the current time.
    :param keep_raw: how long raw points are kept; None: for ever.
    """

    log = Logger()

    def __init__(self, pool: Pool, clock: IReactorTime, keep_raw: Optional[KeepRaw] = None) -> None:
        self.pool = pool
        self.clock = clock
        self.keep_raw = keep_raw
        #: The instant before which raw points were dropped, as last read;
        #: None when none were.
        self.raw_since: Optional[int] = None
        self._loop: Optional[LoopingCall] = None
        self._turn: Optional[Deferred[None]] = None

    def start(self, interval: float = KEEP_INTERVAL) -> None:
        """
        Keep the partitions now, then every ``interval`` seconds.
        """
        self._loop = LoopingCall(self._keep_once)
        self._loop.clock = self.clock
        self._loop.start(interval, now=True).addErrback(
            lambda f: self.log.failure("the turns of keeping the partitions stopped", f)
        )

    def _keep_once(self) -> "Deferred[None]":
        self._turn = self.keeping()
        return self._turn

    async def stop(self) -> None:
        """
        Stop keeping the partitions, once the turn under way is over.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._turn is not None and not self._turn.called:
            await self._turn

    def raw_kept_since(self) -> Optional[int]:
        """
        :return: :attr:`raw_since` (a :data:`blip.web.answers.RawSince`).
        """
        return self.raw_since

    def now(self) -> int:
        """:return: the current unix time in ms."""
        return int(self.clock.seconds() * 1000)

    async def keep(self) -> None:
        """
        Make the partitions due, drop those past the retention, and read
        since when raw points are kept.
        """
        notes = await run_in(self.pool, ensure_months(self.now()))
        if notes:
            self.log.info("partitions of readings: {notes}", notes="; ".join(notes))
        if self.keep_raw is not None:
            await self.drop_old(self.keep_raw.cutoff(self.now()))
        await self.load()

    async def drop_old(self, cutoff: int) -> list[Dropped]:
        """
        Detach and drop every partition of raw points wholly before
        ``cutoff``, one per transaction, oldest first.

        :return: what was dropped.
        """
        dropped = []
        for partition in older_than(await run_in(self.pool, read_partitions()), cutoff):
            done = await run_in(self.pool, drop_partition(partition.name, cutoff, self.now()))
            if done is not None:
                self.log.info(
                    "dropped the raw points of {name} ({rows} points before {until} ms, older than"
                    " {keep}); their minute and hour rollups stay",
                    name=done.name, rows=done.rows, until=done.high,
                    keep=self.keep_raw.describe() if self.keep_raw else "asked",
                )
                dropped.append(done)
        return dropped

    async def load(self) -> None:
        """
        Read since when raw points are kept.
        """
        self.raw_since = await run_in(self.pool, raw_since())

    def keeping(self) -> "Deferred[None]":
        """
        :meth:`keep`, for a timer: a database away is left for the next
        time, quietly; anything else is logged. Never fails.
        """
        done = Deferred.fromCoroutine(self.keep())
        done.addErrback(self._failed)
        return done

    def _failed(self, f: Failure) -> None:
        if not f.check(*RETRIABLE):
            self.log.failure("keeping the partitions of readings failed", f)
