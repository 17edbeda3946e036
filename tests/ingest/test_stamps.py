"""
Tests of the arrival stamps: strictly increasing per meter whatever the
clock does, seeded across restarts, and a clock that stepped back warned
about once.
"""

from blip.ingest.stamps import Stamps


def test_stamps_strictly_increase_per_meter() -> None:
    """
    Two blips in one millisecond, or after the clock stepped back, get the
    previous stamp + 1; meters are independent.
    """
    stamps = Stamps()
    t = 1_700_000_000_000
    given = [(1, t), (1, t), (2, t), (1, t - 5000)]
    assert [(meter, stamps.next(meter, now)) for meter, now in given] == [
        (1, t), (1, t + 1), (2, t), (1, t + 2)
    ]


def test_stamps_seeded_from_a_later_stamp() -> None:
    """
    A seeded stamp (the last one stored before a restart) bounds the next.
    """
    stamps = Stamps()
    stamps.seed(1, 5000)
    assert stamps.next(1, 4000) == 5001
    stamps.seed(1, 100)
    assert stamps.next(1, 9000) == 9000


def test_stamps_ahead_of_the_clock_are_warned_about_once(log_events) -> None:
    """
    A meter whose stamps run ahead of the clock is warned about once, not
    on every blip, until the clock catches up; a later step back warns
    again.
    """
    stamps = Stamps()
    stamps.next(1, 10_000)
    for _ in range(100):
        stamps.next(1, 5_000)
    stamps.next(1, 20_000)
    stamps.next(1, 15_000)
    warnings = [e for e in log_events if "ahead of the clock" in e.get("log_format", "")]
    assert len(warnings) == 2
