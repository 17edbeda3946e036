"""
The ingest spool: an append-only file under the state directory that holds
the points the database has not committed yet, so that a database outage, a
restart or a ``kill -9`` loses none of them.

The file is ``<state-dir>/spool``: an 8-byte header, ``BLIPSPL2``, then one
20-byte record per point, little-endian: meter (int32), stamp (int64), ms
(int32), and the CRC-32 of those 16 bytes (uint32). Points are appended as
they arrive, the file is fsynced once per batch, and it is removed as soon as
every point in it is committed. It exists only while it holds points the
database does not have (or may not have: a point committed just before a
crash is written again, and skipped as a duplicate). A spool of earlier
versions (header ``BLIPSPL1``: the same records without the checksum) is
read, and appended to, in its own format until it is drained.

A spool left by a previous run is checked record by record when it is taken
over: a record whose checksum does not match, or whose meter or ms is out of
range (torn by a crash, damaged on disk), is skipped, counted and logged;
every valid record is kept, in order.

While the spool is small its points are also kept in memory, so replaying
them reads nothing back; past :data:`MEMORY_CAP` points the file alone holds
them and they are read back in chunks.
"""

import os
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Optional, Sequence

from twisted.logger import Logger

from blip.model import INT_MAX, Point

#: One point without its checksum: meter, stamp, ms.
_BODY = struct.Struct("<iqi")


@dataclass(frozen=True)
class Format:
    """
    One version of the file's layout.

    :param header: the file's first 8 bytes.
    :param record: one point's record.
    :param checksum: whether a record ends with the CRC-32 of its point.
    """

    header: bytes
    record: struct.Struct
    checksum: bool

    def pack(self, points: Sequence[Point]) -> bytes:
        """
        :return: the records of ``points``.
        """
        if not self.checksum:
            return b"".join([_BODY.pack(p.meter, p.stamp, p.ms) for p in points])
        pack, crc = self.record.pack, zlib.crc32
        return b"".join(
            [pack(p.meter, p.stamp, p.ms, crc(_BODY.pack(p.meter, p.stamp, p.ms))) for p in points]
        )

    def read(self, data: bytes) -> list[Point]:
        """
        :return: the points of records already checked.
        """
        if not self.checksum:
            return [Point(*fields) for fields in _BODY.iter_unpack(data)]
        return [Point(m, s, ms) for m, s, ms, _ in self.record.iter_unpack(data)]

    def check(self, data: bytes) -> Iterator[Optional[Point]]:
        """
        :return: the point of each record, or None for a record that is not
            a valid point.
        """
        view = memoryview(data)
        size = self.record.size
        for offset in range(0, len(data) - size + 1, size):
            if self.checksum:
                meter, stamp, ms, crc = self.record.unpack_from(data, offset)
                if crc != zlib.crc32(view[offset:offset + _BODY.size]):
                    yield None
                    continue
            else:
                meter, stamp, ms = _BODY.unpack_from(data, offset)
            yield Point(meter, stamp, ms) if 0 <= meter <= INT_MAX and 0 < ms <= INT_MAX else None


#: The layout of new spool files.
CURRENT = Format(b"BLIPSPL2", struct.Struct("<iqiI"), True)
#: The layout of the first spool files: 16 bytes a point, no checksum (also
#: how ingest keeps the points it may have to write again).
PLAIN = Format(b"BLIPSPL1", _BODY, False)
#: Every layout that can be read, by header.
FORMATS = {f.header: f for f in (CURRENT, PLAIN)}
#: The first bytes of a new spool file: its format and version.
HEADER = CURRENT.header
#: One point's record in a new spool file.
RECORD = CURRENT.record
#: Points kept in memory besides the file; beyond this only the file has them.
MEMORY_CAP = 100_000
#: Records read at a time when scanning a spool left by a previous run.
SCAN_RECORDS = 65536
#: Points packed and written at a time: a full disk costs one such write.
APPEND_CHUNK = 4096


class AppendError(OSError):
    """
    The file could not take every point (a full disk): the first
    :attr:`appended` of them are in the spool, the others are not.
    """

    def __init__(self, appended: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.appended = appended


class Spool:
    """
    Points not yet committed to the database, in the order they arrived.

    :param path: the spool file; None keeps the points in memory only (for
        tests and benchmarks: nothing survives a restart).
    :param memory_cap: how many points may also be kept in memory.
    """

    log = Logger()

    def __init__(self, path: Optional[Path], memory_cap: int = MEMORY_CAP) -> None:
        self.path = path
        self.memory_cap = memory_cap
        #: Records of the spool taken over at start that were not valid
        #: points, and were skipped.
        self.invalid = 0
        self._format = CURRENT
        self._fd: Optional[int] = None
        self._head = len(HEADER)
        self._end = len(HEADER)
        # Offsets of the records after the head that are skipped, in order.
        self._bad: deque[int] = deque()
        # Every point not yet consumed, or None once the file alone has them.
        self._memory: Optional[deque[Point]] = deque()
        self._unsynced = False
        self._new_file = False

    @property
    def _size(self) -> int:
        return self._format.record.size

    def __len__(self) -> int:
        """
        :return: how many points are waiting to be committed.
        """
        if self.path is None:
            assert self._memory is not None
            return len(self._memory)
        return (self._end - self._head) // self._size - len(self._bad)

    def open(self) -> list[Point]:
        """
        Take over the spool left by a previous run, if any: skip the records
        that are not valid points (torn by a crash, damaged), and find each
        meter's newest point.

        :return: the newest spooled point of each meter.
        """
        if self.path is None or not self.path.exists():
            return []
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        format = FORMATS.get(head) if size >= 8 else None
        if format is None:
            os.close(fd)
            if size == 0:
                self.path.unlink()
                return []
            aside = self.path.with_name(f"{self.path.name}.unknown-{int(time.time())}")
            self.path.rename(aside)
            self.log.error(
                "{path} is not a blipserver spool; moved it to {aside} and"
                " started a new one",
                path=str(self.path),
                aside=str(aside),
            )
            return []
        record = format.record.size
        torn = (size - len(head)) % record
        if torn:
            size -= torn
            os.ftruncate(fd, size)
        self._fd, self._format, self._head, self._end = fd, format, len(head), size
        self._memory = None
        newest: dict[int, Point] = {}
        offset = self._head
        while offset < self._end:
            block = os.pread(fd, min(SCAN_RECORDS * record, self._end - offset), offset)
            for index, point in enumerate(format.check(block)):
                if point is None:
                    self._bad.append(offset + index * record)
                    continue
                last = newest.get(point.meter)
                if last is None or point.stamp > last.stamp:
                    newest[point.meter] = point
            offset += len(block)
        self.invalid = len(self._bad) + (1 if torn else 0)
        if self.invalid:
            self.log.warn(
                "skipped {count} records of {path} that are not valid points (the"
                " end of a record torn by a crash: {torn} bytes; damaged records:"
                " {damaged}); kept the {kept} valid ones",
                count=self.invalid,
                path=str(self.path),
                torn=torn,
                damaged=len(self._bad),
                kept=len(self),
            )
        self._skip_bad()
        if not len(self):
            self._drained()
        return list(newest.values())

    def append(self, points: Sequence[Point]) -> None:
        """
        Add points after those already spooled. They are in the file (and
        survive the process being killed) when this returns, and on disk
        after the next :meth:`sync`.

        :raise AppendError: when the file cannot take them all; it then
            holds whole records only, and the spool the points it says.
        """
        if not points:
            return
        appended = 0
        try:
            if self.path is not None:
                fd = self._file()
                for start in range(0, len(points), APPEND_CHUNK):
                    chunk = points[start:start + APPEND_CHUNK]
                    data = self._format.pack(chunk)
                    written = 0
                    try:
                        while written < len(data):
                            written += os.write(fd, memoryview(data)[written:])
                    finally:
                        whole = written // self._size
                        if whole:
                            self._end += whole * self._size
                            appended += whole
                            self._unsynced = True
                        if written % self._size:
                            os.ftruncate(fd, self._end)
            else:
                appended = len(points)
        except OSError as e:
            raise AppendError(appended, e) from e
        finally:
            self._remember(points[:appended])

    def _remember(self, points: Sequence[Point]) -> None:
        if self._memory is None or not points:
            return
        if self.path is not None and len(self._memory) + len(points) > self.memory_cap:
            self._memory = None
        else:
            self._memory.extend(points)

    def sync(self) -> None:
        """
        Make what was appended durable: one fsync, plus one of the folder
        when the file is new.
        """
        if self._fd is None or not self._unsynced:
            return
        os.fsync(self._fd)
        if self._new_file and self.path is not None:
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
            self._new_file = False
        self._unsynced = False

    def peek(self, limit: int) -> list[Point]:
        """
        :return: up to ``limit`` of the oldest points, which stay spooled
            until :meth:`consume` is called.
        """
        if self._memory is not None:
            return list(islice(self._memory, limit))
        assert self._fd is not None
        end = self._bad[0] if self._bad else self._end
        count = min(limit, (end - self._head) // self._size)
        data = os.pread(self._fd, count * self._size, self._head)
        return self._format.read(data)

    def consume(self, count: int) -> None:
        """
        Forget the ``count`` oldest points, now committed; remove the file
        once it holds nothing else.
        """
        count = min(count, len(self))
        if self._memory is not None:
            if count == len(self._memory):
                self._memory.clear()
            else:
                for _ in range(count):
                    self._memory.popleft()
        while count and self.path is not None:
            end = self._bad[0] if self._bad else self._end
            step = min(count, (end - self._head) // self._size)
            self._head += step * self._size
            count -= step
            self._skip_bad()
        if self.path is not None and self._head >= self._end:
            self._drained()

    def close(self) -> None:
        """
        Sync and close the file; what it holds is read again by
        :meth:`open` at the next start.
        """
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

    def _skip_bad(self) -> None:
        while self._bad and self._bad[0] == self._head:
            self._bad.popleft()
            self._head += self._size

    def _file(self) -> int:
        if self._fd is None:
            assert self.path is not None
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_TRUNC)
                created = False
            try:
                _write_all(fd, HEADER)
            except OSError:
                os.close(fd)
                if created:
                    # Never leave a file with a partial header behind.
                    self.path.unlink(missing_ok=True)
                raise
            self._fd, self._format = fd, CURRENT
            self._head = self._end = len(HEADER)
            self._new_file = True
        return self._fd

    def _drained(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self._format = CURRENT
        self._head = self._end = len(HEADER)
        self._bad.clear()
        self._memory = deque()
        self._unsynced = self._new_file = False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
