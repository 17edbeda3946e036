"""
Tests of the lane: connections it takes are read by it, not the reactor,
until they are paused, given back, or their client hangs up; a protocol
that fails while it reads is logged and its connection ended, and the
others go on; where it cannot ride (no descriptors to watch, a wrapping
transport), the transport reads as ever.
"""

import socket
from typing import Any, Optional

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from blip.web.lane import Lane
from tests.conftest import wait_until, within


class Reader(Protocol):
    """
    Takes its connection into a lane as it opens, and keeps what it reads;
    ``fail`` makes it raise on what it reads.
    """

    def __init__(self, lane: Lane, fail: bool = False) -> None:
        self.lane = lane
        self.fail = fail
        self.fd = -1
        self.got = b""
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.lane.take(self)

    def dataReceived(self, data: bytes) -> None:
        if self.fail:
            raise ValueError("cannot read this")
        self.got += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lane.forget(self)
        self.lost.callback(None)


class Readers:
    """
    A port whose connections are :class:`Reader`\\ s in one lane, and
    peers connected to it.
    """

    def __init__(self, fail: bool = False) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.lane = Lane(reactor)
        self.readers: list[Reader] = []
        self.fail = fail
        self.port = reactor.listenTCP(0, Factory.forProtocol(self._reader), interface="127.0.0.1")
        self.peers: list[socket.socket] = []

    def _reader(self) -> Reader:
        reader = Reader(self.lane, self.fail and not self.readers)
        self.readers.append(reader)
        return reader

    async def connect(self) -> tuple[socket.socket, Reader]:
        """:return: a new peer, and its reader once connected."""
        peer = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=10)
        self.peers.append(peer)
        await wait_until(lambda: len(self.readers) == len(self.peers))
        return peer, self.readers[-1]

    def reading(self, reader: Reader) -> bool:
        """:return: whether the reactor reads ``reader``'s connection itself."""
        return reader.transport in self.reactor.getReaders()

    async def close(self) -> None:
        for peer in self.peers:
            peer.close()
        await self.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_lane_reads_until_it_gives_back() -> None:
    """
    A connection taken is read by the lane (the reactor does not read it),
    then, given back, by its transport again: the protocol gets all that
    arrives, in order, either way.
    """
    readers = Readers()
    try:
        peer, reader = await readers.connect()
        assert reader.fd >= 0 and len(readers.lane) == 1
        assert not readers.reading(reader)
        peer.sendall(b"one ")
        await wait_until(lambda: reader.got == b"one ")
        readers.lane.give_back(reader, reading=True)
        assert readers.reading(reader) and len(readers.lane) == 0 and reader.fd == -1
        peer.sendall(b"two")
        await wait_until(lambda: reader.got == b"one two")
    finally:
        await readers.close()


@pytest_twisted.ensureDeferred
async def test_a_paused_connection_is_not_read_until_resumed() -> None:
    """
    While paused, what a connection's peer sends is not read (another
    connection's, sent after it, is); resumed, it is.
    """
    readers = Readers()
    try:
        (first, one), (second, two) = await readers.connect(), await readers.connect()
        readers.lane.pause(one)
        first.sendall(b"held")
        second.sendall(b"read")
        await wait_until(lambda: two.got == b"read")
        assert one.got == b""
        readers.lane.resume(one)
        await wait_until(lambda: one.got == b"held")
    finally:
        await readers.close()


@pytest_twisted.ensureDeferred
async def test_a_hang_up_ends_the_connection_as_usual() -> None:
    """
    When a peer hangs up, its transport ends the connection as it always
    does (the protocol hears of it, the lane forgets it); the other
    connections stay in the lane.
    """
    readers = Readers()
    try:
        (first, one), (_, two) = await readers.connect(), await readers.connect()
        first.close()
        await within(one.lost)
        assert len(readers.lane) == 1
        assert not two.lost.called
    finally:
        await readers.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_given_back_at_its_end_is_let_be() -> None:
    """
    A connection the lane gave back when its peer stopped sending is the
    transport's alone: pausing and resuming it go to the transport, giving
    it back again (its protocol may not have heard of the end yet) changes
    nothing, and the transport ends it as usual.
    """
    readers = Readers()
    try:
        peer, reader = await readers.connect()
        peer.sendall(b"ask")
        peer.shutdown(socket.SHUT_WR)
        await wait_until(lambda: reader.fd == -1)
        assert reader.got == b"ask" and len(readers.lane) == 0
        readers.lane.pause(reader)
        readers.lane.resume(reader)
        readers.lane.give_back(reader, reading=False)
        assert reader.fd == -1 and len(readers.lane) == 0
        await within(reader.lost)
        assert peer.recv(10) == b""
    finally:
        await readers.close()


@pytest_twisted.ensureDeferred
async def test_a_protocol_failing_to_read_ends_only_its_connection() -> None:
    """
    A protocol that raises on what it reads is logged as a failure and its
    connection is ended; the next connection is read as usual.
    """
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    readers = Readers(fail=True)
    try:
        (bad_peer, bad), (good_peer, good) = await readers.connect(), await readers.connect()
        bad_peer.sendall(b"boom")
        await within(bad.lost)
        good_peer.sendall(b"fine")
        await wait_until(lambda: good.got == b"fine")
        assert [f["log_failure"].type for f in failures] == [ValueError]
        assert len(readers.lane) == 1
    finally:
        globalLogPublisher.removeObserver(observe)
        await readers.close()


@pytest_twisted.ensureDeferred
async def test_a_lane_let_go_ends_its_connections_as_the_reactor_does() -> None:
    """
    When the reactor lets go of the lane (it stops, or the lane's epoll
    fails), its connections end as the reactor's own do: the protocols
    hear of it, the peers see the connection closed; the next connection
    is read by a new epoll.
    """
    readers = Readers()
    try:
        (peer, _), (_, reader) = await readers.connect(), await readers.connect()
        assert reader.fd >= 0
        readers.reactor.removeReader(readers.lane)
        readers.lane.connectionLost(Failure(ConnectionLost()))
        assert all(r.lost.called for r in readers.readers) and len(readers.lane) == 0
        assert peer.recv(10) == b""
        new_peer, new = await readers.connect()
        assert new.fd >= 0
        new_peer.sendall(b"again")
        await wait_until(lambda: new.got == b"again")
    finally:
        await readers.close()


def test_without_descriptors_or_a_socket_the_transport_reads() -> None:
    """
    A lane on a reactor that watches no descriptors (a test's clock) takes
    nothing; nor does any lane take a transport without a socket of its
    own (a test's, or a wrapping one as TLS is).
    """
    from twisted.internet import reactor

    class Transported:
        transport: Optional[Any] = StringTransport()
        fd = 7

        def dataReceived(self, data: bytes) -> None:
            pass

    for lane in (Lane(Clock()), Lane(reactor)):
        rider = Transported()
        lane.take(rider)
        assert rider.fd == -1 and len(lane) == 0
