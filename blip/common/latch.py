"""
A latch: something that is ready or not (a database prepared, a connection
open, a subscription live), and the Deferreds of whoever waits for it.
"""

from typing import Optional

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure


class Latch:
    """
    Waiters park until the latch is set; while it is set, they go on at
    once. It may be cleared again (a connection lost) or fail (what it
    waits for will never come), which fails the parked waiters.
    """

    def __init__(self) -> None:
        #: Whether waiters go on at once.
        self.is_set = False
        self._waiters: list[Deferred[None]] = []

    def wait(self) -> "Deferred[None]":
        """
        :return: a Deferred that fires once the latch is set (at once if it
            is); cancelling it only stops this wait.
        """
        if self.is_set:
            return succeed(None)
        d: Deferred[None] = Deferred(self._forget)
        self._waiters.append(d)
        return d

    def set(self) -> None:
        """
        Let every parked waiter go on, and later ones at once.
        """
        self.is_set = True
        self._release(None)

    def clear(self) -> None:
        """
        Make later waiters park again.
        """
        self.is_set = False

    def fail(self, failure: Failure) -> None:
        """
        Fail every parked waiter with ``failure``; the latch stays unset.
        """
        self._release(failure)

    def _release(self, failure: Optional[Failure]) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    def _forget(self, d: "Deferred[None]") -> None:
        if d in self._waiters:
            self._waiters.remove(d)
