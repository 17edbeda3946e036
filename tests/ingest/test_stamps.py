"""
Tests of the arrival stamps: strictly increasing per meter whatever the
clock does, seeded across restarts (from a file in the state dir too), and
a clock that stepped back warned about once.
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


def test_the_newest_stamps_are_kept_for_the_next_run(tmp_path) -> None:
    """
    Each meter's newest stamp is written to the file (only when one
    changed), and seeds the stamps of the next run: a clock that starts
    behind them does not stamp inside the time already stamped.
    """
    path = tmp_path / "stamps.json"
    stamps = Stamps(path)
    stamps.load()
    stamps.next(1, 5000)
    stamps.next(1, 5000)
    stamps.next(7, 9000)
    stamps.keep()
    written = path.stat().st_mtime_ns
    stamps.keep()
    assert path.stat().st_mtime_ns == written, "nothing changed, nothing written"
    assert not path.with_name(".stamps.json.new").exists()
    later = Stamps(path)
    later.load()
    assert later.next(1, 100) == 5002
    assert later.next(7, 100) == 9001
    assert later.next(2, 100) == 100


def test_a_file_that_cannot_be_read_is_ignored(tmp_path, log_events) -> None:
    """
    A stamps file that is not what it should be is logged and ignored;
    stamps then start from the clock.
    """
    path = tmp_path / "stamps.json"
    for text in ("{not json", '{"stamps": {"1": "soon"}}', '{"stamps": {"-3": 5}}', "[]"):
        path.write_text(text)
        stamps = Stamps(path)
        stamps.load()
        assert stamps.next(1, 100) == 100
    warnings = [e for e in log_events if e.get("log_format", "").startswith("ignoring")]
    assert len(warnings) == 4
