"""
The ingest spool: an append-only file under the state directory that holds
the points the database has not committed yet, so that a database outage, a
restart or a ``kill -9`` loses none of them.

The file is ``<state-dir>/spool``: an 8-byte header, ``BLIPSPL1``, then one
16-byte record per point, little-endian: meter (int32), stamp (int64), ms
(int32). Points are appended as they arrive, the file is fsynced once per
batch, and it is removed as soon as every point in it is committed. It exists
only while it holds points the database does not have (or may not have: a
point committed just before a crash is written again, and skipped as a
duplicate).

While the spool is small its points are also kept in memory, so replaying
them reads nothing back; past :data:`MEMORY_CAP` points the file alone holds
them and they are read back in chunks.
"""

import os
import struct
import time
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Optional, Sequence

from twisted.logger import Logger

from blip.model import Point

#: The first bytes of a spool file: its format and version.
HEADER = b"BLIPSPL1"
#: One point: meter, stamp, ms.
RECORD = struct.Struct("<iqi")
#: Points kept in memory besides the file; beyond this only the file has them.
MEMORY_CAP = 100_000
#: Bytes read at a time when scanning a spool left by a previous run.
SCAN_BLOCK = RECORD.size * 65536


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
        self._fd: Optional[int] = None
        self._head = len(HEADER)
        self._end = len(HEADER)
        # Every point not yet consumed, or None once the file alone has them.
        self._memory: Optional[deque[Point]] = deque()
        self._unsynced = False
        self._new_file = False

    def __len__(self) -> int:
        """
        :return: how many points are waiting to be committed.
        """
        if self.path is None:
            assert self._memory is not None
            return len(self._memory)
        return (self._end - self._head) // RECORD.size

    def open(self) -> list[Point]:
        """
        Take over the spool left by a previous run, if any: drop a record
        torn by a crash, and find each meter's newest point.

        :return: the newest spooled point of each meter.
        """
        if self.path is None or not self.path.exists():
            return []
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        size = os.fstat(fd).st_size
        if size < len(HEADER) or os.pread(fd, len(HEADER), 0) != HEADER:
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
        torn = (size - len(HEADER)) % RECORD.size
        if torn:
            size -= torn
            os.ftruncate(fd, size)
            self.log.warn(
                "dropped {torn} bytes of a point torn by a crash at the end"
                " of {path}",
                torn=torn,
                path=str(self.path),
            )
        self._fd, self._head, self._end = fd, len(HEADER), size
        self._memory = None
        newest: dict[int, Point] = {}
        offset = self._head
        while offset < self._end:
            block = os.pread(fd, min(SCAN_BLOCK, self._end - offset), offset)
            for meter, stamp, ms in RECORD.iter_unpack(block):
                last = newest.get(meter)
                if last is None or stamp > last.stamp:
                    newest[meter] = Point(meter, stamp, ms)
            offset += len(block)
        if not len(self):
            self._drained()
        return list(newest.values())

    def append(self, points: Sequence[Point]) -> None:
        """
        Add points after those already spooled. They are in the file (and
        survive the process being killed) when this returns, and on disk
        after the next :meth:`sync`.

        :raise OSError: when the file cannot be written; the spool is then
            as it was before.
        """
        if not points:
            return
        if self.path is not None:
            data = b"".join([RECORD.pack(p.meter, p.stamp, p.ms) for p in points])
            fd = self._file()
            try:
                _write_all(fd, data)
            except OSError:
                os.ftruncate(fd, self._end)
                raise
            self._end += len(data)
            self._unsynced = True
        if self._memory is not None:
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
        count = min(limit, len(self))
        data = os.pread(self._fd, count * RECORD.size, self._head)
        return [Point(*fields) for fields in RECORD.iter_unpack(data)]

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
        self._head += count * RECORD.size
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

    def _file(self) -> int:
        if self._fd is None:
            assert self.path is not None
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, HEADER)
            except OSError:
                os.close(fd)
                raise
            self._fd, self._head, self._end = fd, len(HEADER), len(HEADER)
            self._new_file = True
        return self._fd

    def _drained(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self._head = self._end = len(HEADER)
        self._memory = deque()
        self._unsynced = self._new_file = False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
