"""
Tests of the spool: order, durability across a new process, a record torn
by a crash, damaged records, the earlier format, the memory cap, removal
once drained, and a full disk.
"""

import os
import struct
from pathlib import Path

import pytest

from blip.ingest.spool import CURRENT, HEADER, RECORD, AppendError, Spool
from blip.model import INT_MAX, Point
from tests.conftest import SmallFilesystem

T0 = 1_700_000_000_000


def points(count: int, meter: int = 1, start: int = T0) -> list[Point]:
    """:return: ``count`` points a millisecond apart, ms = their index."""
    return [Point(meter, start + i, i + 1) for i in range(count)]


def file_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """
    :return: a list that gets the size of every read the spool makes of its
        file from now on.
    """
    reads: list[int] = []
    pread = os.pread

    def counted(fd: int, size: int, offset: int) -> bytes:
        reads.append(size)
        return pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", counted)
    return reads


def test_points_come_back_in_order_and_the_file_goes_when_drained(tmp_path: Path) -> None:
    """
    Points are read back oldest first, stay until consumed, and the file
    exists exactly while it holds points.
    """
    path = tmp_path / "spool"
    spool = Spool(path)
    assert spool.open() == []
    assert not path.exists()
    spool.append(points(3))
    spool.append(points(2, meter=2))
    spool.sync()
    assert path.stat().st_size == len(HEADER) + 5 * RECORD.size
    assert spool.peek(4) == points(3) + points(1, meter=2)
    assert spool.peek(4) == points(3) + points(1, meter=2)
    spool.consume(3)
    assert len(spool) == 2
    assert spool.peek(10) == points(2, meter=2)
    spool.consume(2)
    assert len(spool) == 0
    assert not path.exists()
    spool.append(points(1))
    assert path.exists()
    spool.close()


def test_a_new_process_finds_what_the_last_one_left(tmp_path: Path) -> None:
    """
    A spool opened later on a file that was not drained reads all of it, in
    order (points consumed before are read again: writing them twice is
    harmless), and names each meter's newest point.
    """
    path = tmp_path / "spool"
    first = Spool(path)
    first.append(points(5) + points(3, meter=7, start=T0 + 100))
    first.consume(2)
    first.close()
    second = Spool(path)
    newest = second.open()
    assert sorted(newest, key=lambda p: p.meter) == [Point(1, T0 + 4, 5), Point(7, T0 + 102, 3)]
    assert second.peek(100) == points(5) + points(3, meter=7, start=T0 + 100)


def test_points_are_in_the_file_before_sync(tmp_path: Path) -> None:
    """
    A point is in the file as soon as append returns: a process killed
    before the next fsync loses nothing (only a power cut could).
    """
    path = tmp_path / "spool"
    spool = Spool(path)
    spool.append(points(1))
    other = Spool(path)
    assert other.open() == points(1)
    spool.close()


def test_a_record_torn_by_a_crash_is_dropped(tmp_path: Path, log_events) -> None:
    """
    A partial record at the end (a crash in the middle of a write) is cut
    off with a warning; the whole records before it are kept, and records
    appended after it line up.
    """
    path = tmp_path / "spool"
    spool = Spool(path)
    spool.append(points(2))
    spool.close()
    with open(path, "ab") as f:
        f.write(CURRENT.pack([Point(1, T0 + 2, 3)])[:7])
    again = Spool(path)
    again.open()
    assert again.peek(10) == points(2)
    again.append([Point(1, T0 + 9, 9)])
    assert again.peek(10) == points(2) + [Point(1, T0 + 9, 9)]
    assert any("torn" in e["log_format"] for e in log_events)
    again.close()


def drain(spool: Spool, chunk: int) -> list[Point]:
    """:return: every point of ``spool``, peeked and consumed ``chunk`` at a time."""
    seen: list[Point] = []
    while len(spool):
        page = spool.peek(chunk)
        assert page, "nothing peeked from a spool that is not empty"
        seen.extend(page)
        spool.consume(len(page))
    return seen


def damage(path: Path, index: int, data: bytes, offset: int = 0) -> None:
    """Overwrite bytes of record number ``index`` of the spool at ``path``."""
    with open(path, "r+b") as f:
        f.seek(len(HEADER) + index * RECORD.size + offset)
        f.write(data)


def test_damaged_records_are_skipped_and_counted(tmp_path: Path, log_events) -> None:
    """
    Records whose checksum does not match (a bit flipped in a stamp, which
    would otherwise seed the stamps years ahead), zeroed ones (blocks a
    power cut left empty), and a torn end are skipped, counted and logged;
    every valid record is read back, in order, around them.
    """
    path = tmp_path / "spool"
    written = points(8) + points(2, meter=7, start=T0 + 100)
    spool = Spool(path)
    spool.append(written)
    spool.close()
    flipped = struct.pack("<q", (T0 + 7) ^ (1 << 45))
    damage(path, 7, flipped, offset=4)
    damage(path, 2, bytes(RECORD.size))
    damage(path, 3, bytes(RECORD.size))
    with open(path, "ab") as f:
        f.write(b"\xff" * 5)
    again = Spool(path)
    newest = again.open()
    assert sorted(newest, key=lambda p: p.meter) == [Point(1, T0 + 6, 7), Point(7, T0 + 101, 2)]
    assert again.invalid == 4
    assert len(again) == 7
    assert drain(again, 2) == written[:2] + written[4:7] + written[8:]
    assert not path.exists()
    warned = [e for e in log_events if "not valid points" in e.get("log_format", "")]
    assert len(warned) == 1 and warned[0]["count"] == 4


def test_a_spool_of_the_earlier_format_is_read_and_appended_to(tmp_path: Path) -> None:
    """
    A spool left by an earlier version (records without a checksum) is
    taken over: records with a meter or ms out of range are skipped, new
    points go after the others in its format, and once drained the next
    file has the current format.
    """
    path = tmp_path / "spool"
    body = struct.Struct("<iqi")
    records = [(1, T0, 10), (1, T0 + 1, 0), (-5, T0 + 2, 10), (1, T0 + 3, 11), (2, T0 + 4, INT_MAX)]
    path.write_bytes(b"BLIPSPL1" + b"".join(body.pack(*r) for r in records))
    spool = Spool(path)
    spool.open()
    assert spool.invalid == 2
    spool.append([Point(1, T0 + 9, 12)])
    spool.close()
    assert path.read_bytes().startswith(b"BLIPSPL1")
    assert (path.stat().st_size - 8) % body.size == 0
    again = Spool(path)
    again.open()
    expected = [Point(1, T0, 10), Point(1, T0 + 3, 11), Point(2, T0 + 4, INT_MAX), Point(1, T0 + 9, 12)]
    assert drain(again, 10) == expected
    assert not path.exists()
    again.append(points(1))
    assert path.read_bytes().startswith(HEADER)
    again.close()


def test_a_full_filesystem_takes_whole_records_only(small_filesystem: SmallFilesystem) -> None:
    """
    On a filesystem that fills up during an append, the spool keeps the
    whole records that fitted, says how many, and holds exactly those; the
    rest can be appended once there is room.
    """
    path = small_filesystem.path / "spool"
    spool = Spool(path)
    spool.append(points(10))
    small_filesystem.fill()
    more = points(20_000, start=T0 + 10)
    with pytest.raises(AppendError) as failed:
        spool.append(more)
    appended = failed.value.appended
    assert appended < len(more)
    assert (path.stat().st_size - len(HEADER)) % RECORD.size == 0
    assert len(spool) == 10 + appended
    small_filesystem.free()
    spool.append(more[appended:])
    spool.close()
    again = Spool(path)
    again.open()
    assert drain(again, 30_000) == points(10) + more


def test_past_the_memory_cap_the_file_alone_holds_the_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Below the cap, points are also kept in memory and replaying reads
    nothing back; beyond it, nothing more is kept in memory and points are
    read back from the file in chunks, in order; memory is used again once
    the file is drained.
    """
    path = tmp_path / "spool"
    spool = Spool(path, memory_cap=10)
    reads = file_reads(monkeypatch)
    spool.append(points(8))
    assert spool.peek(8) == points(8) and reads == []
    spool.append(points(17)[8:])
    seen = []
    while len(spool):
        chunk = spool.peek(4)
        seen.extend(chunk)
        spool.consume(len(chunk))
    assert seen == points(17)
    assert reads == [4 * RECORD.size] * 4 + [RECORD.size]
    assert not path.exists()
    spool.append(points(1))
    assert spool.peek(1) == points(1) and len(reads) == 5
    spool.close()


def test_a_file_that_is_not_a_spool_is_set_aside(tmp_path: Path, log_events) -> None:
    """
    A file with another header is not read as points: it is renamed, kept
    for a person to look at, and a new spool starts.
    """
    path = tmp_path / "spool"
    path.write_bytes(b"something else entirely")
    spool = Spool(path)
    assert spool.open() == []
    assert len(spool) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("spool.unknown-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == b"something else entirely"
    assert any(e["log_level"].name == "error" for e in log_events)


def test_an_empty_file_is_removed(tmp_path: Path) -> None:
    """
    An empty file (a crash right after creating it) holds nothing and is
    removed.
    """
    path = tmp_path / "spool"
    path.write_bytes(b"")
    assert Spool(path).open() == []
    assert not path.exists()


def test_a_full_disk_fails_the_append_and_changes_nothing() -> None:
    """
    When the disk is full the append raises OSError and the spool holds
    what it held before.
    """
    spool = Spool(Path("/dev/full"))
    with pytest.raises(OSError):
        spool.append(points(3))
    assert len(spool) == 0
    assert spool.peek(10) == []


def test_memory_only_spool() -> None:
    """
    Without a path the spool keeps its points in memory, uncapped.
    """
    spool = Spool(None, memory_cap=2)
    spool.append(points(5))
    assert spool.peek(10) == points(5)
    spool.consume(5)
    assert len(spool) == 0
    spool.close()
