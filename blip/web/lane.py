"""
The lane: the reading of the lean path's connections, taken off the
reactor's loop and done in a loop of its own, over an epoll of their
sockets that the reactor watches as one descriptor. When a blip has
answered thousands of parked long-polls, each client's next request then
costs one ``recv`` and a few Python operations, rather than a pass
through the reactor's dispatching, its logging context and the
transport's reading, per connection.

Only connections with a socket of their own ride the lane (plain TCP, not
TLS), and only where the system has epoll. Reading goes back to the
transport, which knows no difference, as soon as anything else is to be
done with the connection: it is paused, handed over to Twisted Web's
channel, closed, or its client hangs up (the transport then finds the end
itself, and ends the connection as usual).
"""

import select
import socket
from typing import Any, Optional, Protocol

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from blip.web.twisted_private import own_socket

#: Most bytes read from a connection at once (as Twisted's TCP reads).
READ_SIZE = 65536
#: Most connections read in one turn of the reactor; the rest wait for the
#: next one, so that nothing else waits long.
MOST_AT_ONCE = 1024


class Rider(Protocol):
    """
    A connection's protocol, as the lane reads for it.
    """

    #: The connection.
    transport: Any
    #: The descriptor the lane reads it by, or -1 while the lane does not
    #: (kept by the lane).
    fd: int

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes read from the connection.
        """


@implementer(IReadDescriptor)
class Lane:
    """
    Reads the connections it is given, in one loop.

    :param reactor: watches the lane's epoll; one that watches no
        descriptors (a test's clock), or a system without epoll, leaves
        every connection to its transport.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        #: The reactor, if the lane can ride it.
        self.reactor: Optional[IReactorFDSet] = (
            reactor if IReactorFDSet.providedBy(reactor) and hasattr(select, "epoll") else None
        )
        self._epoll: Optional["select.epoll"] = None
        #: The riders, by their socket's descriptor, and their sockets.
        self._riders: dict[int, tuple[Rider, socket.socket]] = {}
        #: The descriptors not read until they are resumed.
        self._paused: set[int] = set()

    def __len__(self) -> int:
        return len(self._riders)

    def take(self, rider: Rider) -> None:
        """
        Read ``rider``'s connection here from now on, if it can be (its
        ``fd`` says).
        """
        rider.fd = -1
        sock = own_socket(rider.transport)
        if sock is None or self.reactor is None:
            return
        if self._epoll is None:
            self._epoll = select.epoll()
            self.reactor.addReader(self)
        fd = sock.fileno()
        rider.transport.pauseProducing()
        self._epoll.register(fd, select.EPOLLIN)
        self._riders[fd] = rider, sock
        rider.fd = fd

    def pause(self, rider: Rider) -> None:
        """
        Read nothing more of ``rider``'s connection until :meth:`resume`
        (nor its transport, when the lane does not read it).
        """
        fd = rider.fd
        if fd < 0:
            rider.transport.pauseProducing()
        elif fd not in self._paused:
            self._paused.add(fd)
            self._unwatch(fd)

    def resume(self, rider: Rider) -> None:
        """
        Read ``rider``'s connection again (or its transport does).
        """
        fd = rider.fd
        if fd < 0:
            rider.transport.resumeProducing()
        elif fd in self._paused:
            self._paused.remove(fd)
            assert self._epoll is not None
            self._epoll.register(fd, select.EPOLLIN)

    def give_back(self, rider: Rider, reading: bool) -> None:
        """
        The lane reads ``rider``'s connection no more; its transport does
        if ``reading`` (otherwise it stays paused).
        """
        if self._drop(rider) and reading:
            rider.transport.resumeProducing()

    def forget(self, rider: Rider) -> None:
        """
        ``rider``'s connection is gone (its socket may be closed already).
        """
        self._drop(rider)

    def _drop(self, rider: Rider) -> bool:
        # Whether the lane read the rider's connection (and now does not).
        fd, rider.fd = rider.fd, -1
        if fd < 0:
            return False
        del self._riders[fd]
        if fd in self._paused:
            self._paused.remove(fd)
        else:
            self._unwatch(fd)
        return True

    def _unwatch(self, fd: int) -> None:
        assert self._epoll is not None
        try:
            self._epoll.unregister(fd)
        except OSError:
            # Closed already: nothing to undo.
            pass

    # -- IReadDescriptor ------------------------------------------------------

    def fileno(self) -> int:
        assert self._epoll is not None
        return self._epoll.fileno()

    def doRead(self) -> None:
        assert self._epoll is not None
        riders = self._riders
        for fd, _ in self._epoll.poll(0, MOST_AT_ONCE):
            ridden = riders.get(fd)
            if ridden is None:
                continue
            rider, sock = ridden
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                # The end, or an error: the transport reads it again, and
                # ends the connection as it always does.
                self.give_back(rider, reading=True)
                continue
            try:
                rider.dataReceived(data)
            except Exception:
                self.log.failure("reading a connection")
                self.give_back(rider, reading=False)
                rider.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor lets go of the lane (it stops, or the lane's epoll
        # failed): each connection ends as the reactor ends the ones it
        # watches itself, and a new lane opens for the next ones.
        riders, epoll = self._riders, self._epoll
        self._riders, self._paused, self._epoll = {}, set(), None
        if epoll is not None:
            epoll.close()
        for rider, _ in riders.values():
            rider.fd = -1
            rider.transport.connectionLost(reason)

    def logPrefix(self) -> str:
        return "lane"
