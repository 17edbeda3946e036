"""
The push producer of every answer written a piece at a time (exports,
live streams): it knows whether the client's connection takes more, lets
the writer wait until it does, and holds what is sent meanwhile.

It writes to an :class:`Outlet`: a request's answer
(:class:`RequestOutlet`), or a connection the lean path answers on itself
(:class:`blip.web.lean.Front`).
"""

from collections import deque
from typing import Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

from blip.web.twisted_private import connection_gone, send_now


class Outlet(Protocol):
    """
    Where an answer written a piece at a time goes.
    """

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Let ``producer`` know when the connection takes no more."""

    def unregisterProducer(self) -> None:
        """The producer is done."""

    def write(self, data: bytes) -> None:
        """Write ``data`` and send it at once."""

    def peer(self) -> str:
        """:return: who the answer goes to, for the log."""


class RequestOutlet:
    """
    A request's answer as an :class:`Outlet`.
    """

    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        # Unless the connection is gone, and the producer with it.
        if not connection_gone(self.request):
            self.request.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.request.write(data)
        send_now(self.request.channel.transport)

    def peer(self) -> str:
        address = self.request.getClientAddress()
        return str(getattr(address, "host", address))


@implementer(IPushProducer)
class Backpressure:
    """
    Registers itself as the producer of what goes to ``outlet``.

    :param outlet: the answer written a piece at a time.
    """

    __slots__ = ("outlet", "paused", "stopped", "held", "_waiting")

    def __init__(self, outlet: Outlet) -> None:
        self.outlet = outlet
        #: Whether the connection asked for a pause.
        self.paused = False
        #: Whether the client is gone for good.
        self.stopped = False
        #: What was sent while the connection did not take more (None
        #: while nothing is).
        self.held: Optional[deque[bytes]] = None
        self._waiting: Optional[list[Deferred[None]]] = None
        outlet.registerProducer(self, True)

    @property
    def saturated(self) -> bool:
        """Whether the connection does not take more now."""
        return self.paused or bool(self.held)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        held = self.held
        while held and not self.paused:
            self.outlet.write(held.popleft())
        if not self.paused:
            self._wake()

    def stopProducing(self) -> None:
        self.stopped = True
        self.held = None
        self._wake()

    def send(self, data: bytes) -> int:
        """
        Write ``data`` and send it at once, or hold it while the connection
        is saturated.

        :return: how many pieces are held.
        """
        if self.paused or self.held:
            if self.held is None:
                self.held = deque()
            self.held.append(data)
            return len(self.held)
        self.outlet.write(data)
        return 0

    async def ready(self) -> None:
        """
        Wait until the connection takes more (at once while it does, or
        once the client is gone).
        """
        if self.stopped or not self.saturated:
            return
        if self._waiting is None:
            self._waiting = []
        waiting = self._waiting
        waiter: Deferred[None] = Deferred(waiting.remove)
        waiting.append(waiter)
        await waiter

    def close(self) -> None:
        """
        Drop what is held, let whoever waits go on, and unregister.
        """
        self.held = None
        self._wake()
        self.outlet.unregisterProducer()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        for waiter in waiting or ():
            waiter.callback(None)
