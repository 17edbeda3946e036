"""
Tests of the stretches when a logger was listening and when none was,
worked out from the record of ingest periods (the queries are tested with
the gaps of /api/v1, which classify silences by them).
"""

from blip.db.repairs import Repair
from blip.ingest.downtime import Stretch, classify, repaired, union, unrecorded


def test_periods_are_merged_and_split_a_stretch() -> None:
    """
    Overlapping and touching periods merge; a stretch is split into its
    idle parts (inside a period) and logger_down parts (outside), and
    before the first record of ingest logger_down is unknown.
    """
    listening = union([(50, 60), (10, 20), (15, 30), (30, 40)])
    assert listening == [(10, 40), (50, 60)]
    parts = classify(0, 70, listening)
    assert parts == [
        Stretch(0, 10, "logger_down"), Stretch(10, 40, "idle"),
        Stretch(40, 50, "logger_down"), Stretch(50, 60, "idle"), Stretch(60, 70, "logger_down"),
    ]
    assert unrecorded(parts, 5)[:2] == [Stretch(0, 5, "unknown"), Stretch(5, 10, "logger_down")]
    assert {p.kind for p in unrecorded(parts, None)} == {"unknown", "idle"}


def test_repaired_parts_name_their_peer() -> None:
    """
    The parts of logger_down stretches inside a repair are repaired (with
    the repair's peer), a repair spanning several parts included; idle and
    unknown parts stay as they are.
    """
    parts = [
        Stretch(0, 10, "logger_down"), Stretch(10, 20, "idle"),
        Stretch(20, 40, "logger_down"), Stretch(40, 50, "unknown"),
    ]
    repairs = [Repair(5, 25, "a", 3, 0), Repair(30, 35, "b", 1, 0), Repair(45, 60, "c", 0, 0)]
    assert repaired(parts, repairs) == [
        Stretch(0, 5, "logger_down"), Stretch(5, 10, "repaired", "a"), Stretch(10, 20, "idle"),
        Stretch(20, 25, "repaired", "a"), Stretch(25, 30, "logger_down"),
        Stretch(30, 35, "repaired", "b"), Stretch(35, 40, "logger_down"), Stretch(40, 50, "unknown"),
    ]
    assert repaired(parts, []) == parts
