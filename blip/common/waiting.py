"""
Waiting for a Deferred without owning it: bounded waits used on shutdown,
where cancelling the work itself (a query in flight) would block or lose it.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime


def within(d: "Deferred[Any]", seconds: float, clock: IReactorTime) -> "Deferred[bool]":
    """
    :param d: what to wait for; its result passes on untouched.
    :return: a Deferred that fires True when ``d`` fires, or False after
        ``seconds``, whichever comes first.
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
