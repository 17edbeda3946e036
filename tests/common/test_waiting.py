"""
Tests of :mod:`blip.common.waiting`.
"""

from twisted.internet.defer import CancelledError, Deferred

from blip.common.waiting import detached


def test_detached_passes_the_outcome_on() -> None:
    """
    A detached wait fires with the work's result, or fails with its error.
    """
    work: Deferred[str] = Deferred()
    wait = detached(work)
    work.callback("rows")
    assert wait.result == "rows"

    broken: Deferred[str] = Deferred()
    failures: list = []
    detached(broken).addErrback(failures.append)
    broken.errback(ValueError("a bug"))
    assert failures and failures[0].check(ValueError)


def test_cancelling_a_detached_wait_leaves_the_work_alone() -> None:
    """
    Cancelling the wait fails it with CancelledError at once; the work is
    not cancelled, and its later outcome, even an error, goes nowhere.
    """
    cancelled: list[Deferred[str]] = []
    work: Deferred[str] = Deferred(cancelled.append)
    wait = detached(work)
    failures: list = []
    wait.addErrback(failures.append)
    wait.cancel()
    assert failures and failures[0].check(CancelledError)
    assert cancelled == [] and not work.called
    work.errback(ValueError("too late"))
    assert work.result is None
