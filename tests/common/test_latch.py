"""
Tests of :mod:`blip.common.latch`.
"""

from twisted.python.failure import Failure

from blip.common.latch import Latch


def test_waiters_park_until_set_and_later_ones_go_on_at_once() -> None:
    """
    A waiter parked before the latch is set fires when it is; one that
    comes after fires at once.
    """
    latch = Latch()
    parked = latch.wait()
    assert not parked.called
    latch.set()
    assert parked.called
    assert latch.wait().called


def test_clearing_parks_new_waiters_again() -> None:
    """
    Once cleared, a latch parks waiters until it is set again.
    """
    latch = Latch()
    latch.set()
    latch.clear()
    parked = latch.wait()
    assert not parked.called
    latch.set()
    assert parked.called


def test_a_cancelled_wait_is_forgotten() -> None:
    """
    Cancelling a wait removes it: setting the latch later fires nothing
    twice (a fired Deferred would raise AlreadyCalledError).
    """
    latch = Latch()
    parked = latch.wait()
    parked.addErrback(lambda f: None)
    parked.cancel()
    latch.set()


def test_failing_fails_the_parked_waiters_only() -> None:
    """
    A latch that fails hands the failure to every parked waiter, and stays
    unset.
    """
    latch = Latch()
    parked = latch.wait()
    failures: list[Failure] = []
    parked.addErrback(failures.append)
    latch.fail(Failure(RuntimeError("never")))
    assert [f.getErrorMessage() for f in failures] == ["never"]
    assert not latch.wait().called
