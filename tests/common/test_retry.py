"""
Tests of :mod:`blip.common.retry`.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger

from blip.common.retry import MAX_DELAY, backoff, retrying


class Away(Exception):
    """What an attempt raises while the service is away."""


def test_backoff_grows_up_to_its_cap() -> None:
    """
    The waits double from a quarter of a second and never exceed the cap
    (jitter included).
    """
    delay = backoff()
    waits = [delay(n) for n in range(1, 20)]
    assert waits[0] < waits[3] < waits[6]
    assert max(waits) <= MAX_DELAY + 1


def test_retries_with_backoff_and_says_so_once() -> None:
    """
    Failed attempts are retried after a wait; the first failure is logged
    as a warning, the success after failures at info level, and the result
    of the attempt that worked is returned.
    """
    clock = Clock()
    log = Logger(namespace="test")
    observer = EventLoggingObserver()
    log.observer = observer
    outcomes = [Away("down"), Away("down"), "rows"]

    async def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    done = Deferred.fromCoroutine(retrying(attempt, (Away,), clock, log, "read rows"))
    assert not done.called
    clock.advance(MAX_DELAY + 1)
    clock.advance(MAX_DELAY + 1)
    assert done.result == "rows"
    levels = [(e["log_level"].name, e["log_format"]) for e in observer]
    assert levels[0][0] == "warn" and "retrying" in levels[0][1]
    assert len(levels) == 2 and levels[1][0] == "info"


def test_other_errors_pass_on_at_once() -> None:
    """
    An error that is not retriable is not retried.
    """

    async def attempt() -> None:
        raise ValueError("a bug")

    done = Deferred.fromCoroutine(retrying(attempt, (Away,), Clock(), Logger(), "x"))
    failures: list = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(ValueError)


def test_waits_for_ready_before_each_attempt_and_cancels_cleanly() -> None:
    """
    With ``ready``, no attempt is made before it fires; cancelling the
    retry loop while it waits ends it with CancelledError.
    """
    gate: Deferred[None] = Deferred()
    attempts: list[int] = []

    async def attempt() -> None:
        attempts.append(1)

    done = Deferred.fromCoroutine(retrying(attempt, (Away,), Clock(), Logger(), "x", ready=lambda: gate))
    assert attempts == []
    done.cancel()
    failures: list = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
