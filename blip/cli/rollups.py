"""
Rebuilding the rollups from readings, and checking them against readings,
a day at a time.

A day per transaction keeps every transaction small whatever the range (a
year of 1 Hz readings is 365 transactions of 86 400 rows, with nothing held
in this process), and lets the daemon go on writing in between: each
rebuilt day briefly holds writers of readings back, so that none of their
rows is missed or counted twice.

Rollup rows of buckets that end at or before a meter's first reading are
history (their readings were deleted to save space), and so are those
before the instant raw points were dropped from (``--keep-raw``): they are
never rebuilt, and checking counts them without comparing.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, TextIO

from blip.db.layouts import WIDTHS
from blip.db.sync_store import Counts, Mismatch, SyncStore

HOUR = 3_600_000
#: The range of stamps rebuilt or checked per transaction.
CHUNK = 24 * HOUR
#: Mismatching buckets listed one per line; more are only counted.
MAX_LISTED = 100
_NAMES = {"readings_minutely": "minute", "readings_hourly": "hour"}


@dataclass(frozen=True, slots=True)
class Span:
    """
    The whole hours of one meter's stamps to work on.

    :param meter: the meter.
    :param first: its first reading's stamp (history ends there).
    :param start: the first hour, included.
    :param end: the hour after the last, excluded.
    """

    meter: int
    first: int
    start: int
    end: int

    def chunks(self) -> list[tuple[int, int]]:
        """:return: ``(start, end)`` of each transaction's share."""
        return [(a, min(a + CHUNK, self.end)) for a in range(self.start, self.end, CHUNK)]

    def describe(self) -> str:
        """:return: the span for people."""
        return f"{when(self.start)} to {when(self.end)}"


def when(stamp: int) -> str:
    """:return: a stamp as a UTC time, to the minute or to the second."""
    moment = datetime.fromtimestamp(stamp / 1000, timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC" if stamp % 60_000 == 0 else "%Y-%m-%d %H:%M:%S UTC")


def span(
    store: SyncStore, meter: int, first: Optional[int], last: Optional[int], dropped: Optional[int] = None
) -> Optional[Span]:
    """
    :param first: the first stamp asked for, or None for the meter's first
        reading.
    :param last: the last stamp asked for, or None for the meter's last
        reading or rollup row.
    :param dropped: the instant raw points before which were dropped (a
        whole hour), if any: history ends there at the earliest.
    :return: the whole hours covering them, or None when the meter has no
        readings (its rollups, if any, are all history).
    """
    reading_first, reading_last, rolled = store.span(meter)
    if reading_first is None or reading_last is None:
        return None
    if dropped is not None:
        reading_first = max(reading_first, dropped)
        first = None if first is None else max(first, dropped)
    if first is None:
        first = reading_first
    if last is None:
        last = max(reading_last, rolled if rolled is not None else reading_last)
    start = first - first % HOUR
    end = last - last % HOUR + HOUR
    return Span(meter, reading_first, start, max(start, end))


def meters(store: SyncStore, meter: Optional[int]) -> list[int]:
    """:return: the meter asked for, or every meter with readings or rollups."""
    return [meter] if meter is not None else store.meter_ids()


def rebuild(
    store: SyncStore, meter: Optional[int], first: Optional[int], last: Optional[int], out: TextIO
) -> int:
    """
    Recompute the rollups of one meter or all from readings, reporting each
    meter on ``out``.

    :return: the exit status, 0.
    """
    dropped = store.raw_since()
    for m in meters(store, meter):
        s = span(store, m, first, last, dropped)
        if s is None:
            print(f"meter {m}: no readings; its rollup rows are history and stay", file=out)
            continue
        minutes = hours = 0
        chunks = s.chunks()
        for a, b in chunks:
            changed = store.rebuild(m, a, b)
            minutes += changed[0]
            hours += changed[1]
        print(
            f"meter {m}: rebuilt {s.describe()} in {len(chunks)}"
            f" transaction{'s' if len(chunks) != 1 else ''};"
            f" {minutes} minute rows and {hours} hour rows were wrong, missing or stale",
            file=out,
        )
    return 0


def check(
    store: SyncStore, meter: Optional[int], first: Optional[int], last: Optional[int], out: TextIO
) -> int:
    """
    Report every bucket whose rollup row does not match a recount of
    readings, and a summary per meter, on ``out``.

    :return: the exit status: 0 when everything matches, 1 otherwise.
    """
    total = 0
    dropped = store.raw_since()
    for m in meters(store, meter):
        s = span(store, m, first, last, dropped)
        if s is None:
            print(f"meter {m}: no readings; its rollup rows are history, not checked", file=out)
            continue
        found = {table: 0 for table in WIDTHS}
        for a, b in s.chunks():
            for table in WIDTHS:
                for row in store.mismatches(table, m, a, b, s.first):
                    found[table] += 1
                    total += 1
                    if total <= MAX_LISTED:
                        print(_mismatch(m, _NAMES[table], row), file=out)
        history = [store.history(table, m, s.first) for table in WIDTHS]
        kept = (
            f"; {history[0]} minute and {history[1]} hour rows older than the first reading"
            " are history, not checked" if any(history) else ""
        )
        print(
            f"meter {m}: {s.describe()}: {found['readings_minutely']} minute and"
            f" {found['readings_hourly']} hour rows do not match readings{kept}",
            file=out,
        )
    if total > MAX_LISTED:
        print(f"(only the first {MAX_LISTED} of {total} were listed)", file=out)
    if total:
        print(f"{total} rollup rows do not match readings: run `blip rollups rebuild`", file=out)
        return 1
    print("the rollups match readings", file=out)
    return 0


def _mismatch(meter: int, bucket: str, row: Mismatch) -> str:
    stamp, counted, stored = row
    return (
        f"meter {meter} {bucket} {stamp} ({when(stamp)}):"
        f" readings give {_bucket(counted)}; the rollup has {_bucket(stored)}"
    )


def _bucket(values: Counts) -> str:
    events, sum_ms, min_ms, max_ms = values
    if events is None:
        return "nothing"
    return f"{events} blips, {sum_ms} ms in all, {min_ms} to {max_ms} ms"
