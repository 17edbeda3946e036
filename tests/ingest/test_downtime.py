"""
Tests of the stretches when a logger was listening and when none was,
worked out from the record of ingest periods (the queries are tested with
the gaps of /api/v1, which classify silences by them).
"""

from blip.ingest.downtime import Stretch, classify, union, unrecorded


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

