"""
Waiting for a Deferred without owning it: bounded waits used on shutdown,
and waits that may be cancelled, where cancelling the work itself (a query
in flight) would block or lose it.
"""

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


def within(d: "Deferred[Any]", seconds: float, clock: IReactorTime) -> "Deferred[bool]":
    """
    :param d: what to wait for; its result passes on untouched.
    :return: a Deferred that fires True when ``d`` fires, or False after
        ``seconds``, whichever comes first. It fires while ``d`` runs its
        callbacks: take ``d``'s result through :func:`detached` (awaiting
        ``d`` itself then fails with an AssertionError of Twisted's when
        ``d`` failed).
    """
    result: Deferred[bool] = Deferred()

    def fire(value: bool) -> None:
        if not result.called:
            result.callback(value)
        if call.active():
            call.cancel()

    call = clock.callLater(max(seconds, 0.0), fire, False)

    def passthrough(outcome: Any) -> Any:
        fire(True)
        return outcome

    d.addBoth(passthrough)
    return result


def detached(d: "Deferred[T]") -> "Deferred[T]":
    """
    :param d: the work waited for (a query in flight, whose cancelling
        would block on psycopg2's cancel).
    :return: a Deferred that fires as ``d`` does; cancelling it ends only
        the wait (with CancelledError): ``d`` runs on, and its outcome is
        dropped.
    """
    result: Deferred[T] = Deferred(lambda _: None)

    def passed(value: T) -> None:
        if not result.called:
            result.callback(value)

    def failed(failure: Failure) -> None:
        if not result.called:
            result.errback(failure)

    d.addCallbacks(passed, failed)
    return result
