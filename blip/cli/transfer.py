"""
Points in and out of the database as CSV: ``stamp,ms`` per line (unix ms,
and ms since the previous blink), with an optional ``stamp,ms`` header.

Importing skips points already stored and reports each bad line by its
number; the good ones are imported in transactions of
:data:`IMPORT_BATCH` points, so an interrupted import can simply be run
again. Exporting streams: PostgreSQL sends the rows as they are read, so
memory stays the same for any range. What one exports, the other imports
unchanged.

Archiving writes every meter's raw points before a date, streamed the same
way, to a gzip-compressed CSV file (``meter,stamp,ms``), before
``--keep-raw`` drops them.
"""

import gzip
import os
from pathlib import Path
from typing import IO, Iterable, Iterator, TextIO

from blip.db.sync_store import SyncStore
from blip.model import csv_points

#: Points per import transaction.
IMPORT_BATCH = 50_000
#: Bad lines reported one by one; more are only counted.
MAX_REPORTED = 100


class Points:
    """
    Reads the points of a CSV file, skipping a header and blank lines, and
    reporting bad lines on ``err`` with their number (the first
    :data:`MAX_REPORTED`) before skipping them.

    :param lines: the file's lines.
    :param name: the file's name, for the reports.
    """

    def __init__(self, lines: Iterable[str], name: str, err: TextIO) -> None:
        self.lines = lines
        self.name = name
        self.err = err
        #: How many lines were bad.
        self.bad = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for line, point in csv_points(self.lines):
            if isinstance(point, str):
                self.bad += 1
                if self.bad <= MAX_REPORTED:
                    print(f"{self.name}:{line}: {point}; skipped", file=self.err)
                continue
            yield point


def import_csv(store: SyncStore, meter: int, lines: Iterable[str], name: str, out: TextIO, err: TextIO) -> int:
    """
    Import a CSV file's points into a meter's readings.

    :return: the exit status: 0, or 1 when some lines were bad (the good
        ones are imported all the same).
    """
    read = stored = 0
    batch: list[tuple[int, int]] = []
    source = Points(lines, name, err)
    for point in source:
        batch.append(point)
        if len(batch) == IMPORT_BATCH:
            stored += store.import_points(meter, batch)
            read += len(batch)
            batch = []
    if batch:
        stored += store.import_points(meter, batch)
        read += len(batch)
    if source.bad > MAX_REPORTED:
        print(f"{name}: only the first {MAX_REPORTED} bad lines were reported", file=err)
    print(
        f"{name}: {read} points read for meter {meter}: {stored} imported,"
        f" {read - stored} already stored; {source.bad} bad lines skipped",
        file=out,
    )
    return 1 if source.bad else 0


def export_csv(store: SyncStore, meter: int, first: int, last: int, out: IO[bytes]) -> None:
    """
    Write a meter's points with ``first <= stamp <= last`` as CSV, with a
    header, oldest first.
    """
    store.export(meter, first, last, out)


class ArchiveError(Exception):
    """
    The archive cannot be written; the message says why.
    """


def archive_csv(store: SyncStore, before: int, path: Path) -> int:
    """
    Write every raw point with a stamp below ``before`` to a new file at
    ``path``: gzip-compressed CSV, ``meter,stamp,ms`` with a header, by
    meter and stamp. The file appears whole or not at all (written beside
    it, flushed to disk, then renamed); an existing file is never
    replaced.

    :return: how many points it holds.
    :raise ArchiveError: when the file exists or cannot be written.
    """
    if path.exists():
        raise ArchiveError(f"{path}: exists; an archive is never written over")
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as raw:
            with gzip.GzipFile(filename=path.name.removesuffix(".gz"), fileobj=raw, mode="wb") as out:
                points = store.archive(before, out)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, path)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise ArchiveError(f"{path}: {e.strerror}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return points
