"""
The push producer of every answer written a piece at a time (exports,
live streams): it knows whether the client's connection takes more, lets
the writer wait until it does, and holds what is sent meanwhile.
"""

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

from blip.web.twisted_private import connection_gone, send_now


@implementer(IPushProducer)
class Backpressure:
    """
    Registers itself as the producer of ``request``'s answer.

    :param request: the answer written a piece at a time.
    """

    def __init__(self, request: Request) -> None:
        self.request = request
        #: Whether the connection asked for a pause.
        self.paused = False
        #: Whether the client is gone for good.
        self.stopped = False
        #: What was sent while the connection did not take more.
        self.held: deque[bytes] = deque()
        self._waiting: list[Deferred[None]] = []
        request.registerProducer(self, True)

    @property
    def saturated(self) -> bool:
        """Whether the connection does not take more now."""
        return self.paused or bool(self.held)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.held and not self.paused:
            self.request.write(self.held.popleft())
        if not self.paused:
            self._wake()

    def stopProducing(self) -> None:
        self.stopped = True
        self.held.clear()
        self._wake()

    def send(self, data: bytes) -> int:
        """
        Write ``data`` and send it at once, or hold it while the connection
        is saturated.

        :return: how many pieces are held.
        """
        if self.paused or self.held:
            self.held.append(data)
            return len(self.held)
        self.request.write(data)
        send_now(self.request.channel.transport)
        return 0

    async def ready(self) -> None:
        """
        Wait until the connection takes more (at once while it does, or
        once the client is gone).
        """
        if self.stopped or not (self.paused or self.held):
            return
        waiter: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        await waiter

    def close(self) -> None:
        """
        Drop what is held, let whoever waits go on, and unregister (unless
        the connection is gone, and the producer with it).
        """
        self.held.clear()
        self._wake()
        if not connection_gone(self.request):
            self.request.unregisterProducer()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)
