"""
Tests pinning each behaviour of Twisted Web beyond its public API that
:mod:`blip.web.twisted_private` relies on, so that a Twisted upgrade that
changes one fails here rather than in the daemon.
"""

import socket
from typing import Any, Callable, Optional

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from blip.web.twisted_private import (
    HookedChannel,
    HookedRequest,
    connection_gone,
    hand_over,
    own_socket,
    prerenderable,
    send,
    send_now,
    send_prerendered,
    started_writing,
)
from tests.conftest import wait_until, within


class Parking(Resource):
    """Keeps every request it is given, unanswered."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


class Recording(HookedChannel):
    """Records what its hooks are told."""

    def __init__(self) -> None:
        super().__init__()
        self.long_lines: list[bool] = []
        self.bad = 0
        self.too_large = 0
        self.bodies: list[tuple[bytes, bytes, Optional[int]]] = []
        self.refuse_bodies = False

    def line_too_long(self, request_line: bool, line: bytes) -> None:
        self.long_lines.append(request_line)
        self.transport.loseConnection()

    def bad_request(self) -> None:
        self.bad += 1
        self.transport.loseConnection()

    def head_too_large(self) -> None:
        self.too_large += 1
        self.transport.loseConnection()

    def body_announced(self, method: bytes, target: bytes, length: Optional[int]) -> bool:
        self.bodies.append((method, target, length))
        if self.refuse_bodies:
            self.transport.loseConnection()
            return False
        return True


class Targeted(HookedRequest):
    """Serves every target as ``/hooked``, remembering what came."""

    seen: list[bytes] = []

    def target(self, target: bytes) -> bytes:
        self.seen.append(target)
        return b"/hooked"


def connect(resource: Resource) -> tuple[Recording, StringTransport]:
    """:return: a channel of a site of ``resource``, and its transport."""
    site = Site(resource, requestFactory=Targeted)
    site.protocol = Recording  # type: ignore[assignment]
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4711))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


@pytest.mark.parametrize(
    "data, request_line",
    [
        (b"GET /" + b"a" * 20000, True),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 20000, False),
    ],
)
def test_which_line_is_too_long(data: bytes, request_line: bool) -> None:
    """
    HTTPChannel tells a too-long request line from a too-long header line
    (it makes a request when the request line arrives).
    """
    channel, _ = connect(Parking())
    channel.dataReceived(data)
    assert channel.long_lines == [request_line]


def test_a_long_request_line_after_an_answered_request() -> None:
    """
    Once a request is answered, its connection's next line is a request
    line again (HTTPChannel forgets the answered request).
    """
    parking = Parking()
    channel, transport = connect(parking)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    (request,) = parking.requests
    request.write(b"")
    request.finish()
    channel.dataReceived(b"GET /" + b"a" * 20000)
    assert channel.long_lines == [True]


@pytest.mark.parametrize(
    "data",
    [
        b"GET /last/1 HTTP/1.1 extra\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ],
)
def test_bad_requests_go_to_the_hook(data: bytes) -> None:
    """
    HTTPChannel answers what it cannot parse through
    ``_respondToBadRequestAndDisconnect``, which the hook replaces.
    """
    channel, transport = connect(Parking())
    channel.dataReceived(data)
    assert channel.bad == 1
    assert b"400" not in transport.value()


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(501)),
        b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"b" * 10000 + b"\r\nX-Big: " + b"b" * 10000 + b"\r\n",
    ],
)
def test_a_head_over_the_caps_goes_to_its_hook(head: bytes) -> None:
    """
    More headers than ``maxHeaders``, or a head over ``totalHeadersSize``
    bytes, go through ``_respondToBadRequestAndDisconnect`` with the
    channel's counts of the head over the caps.
    """
    channel, transport = connect(Parking())
    channel.totalHeadersSize = 16384
    channel.dataReceived(head + b"\r\n")
    assert (channel.too_large, channel.bad) == (1, 0)
    assert transport.value() == b""


@pytest.mark.parametrize(
    "head, seen",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", []),
        (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", []),
        (b"POST /a?b HTTP/1.1\r\nContent-Length: 3\r\n\r\n", [(b"POST", b"/a?b", 3)]),
        (b"GET http://x/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", [(b"GET", b"http://x/", None)]),
    ],
)
def test_the_body_hook_knows_the_method(head: bytes, seen: list[tuple]) -> None:
    """
    Once a request's head is whole, the hook is told of a body that
    follows, with the request's method, target as it came and length
    (HTTPChannel's ``_command``, ``_path`` and ``length``; None for
    chunks).
    """
    parking = Parking()
    channel, _ = connect(parking)
    channel.dataReceived(head)
    assert channel.bodies == seen


def test_a_head_refused_by_its_hook_goes_no_further() -> None:
    """
    A request whose head the hook refuses is never handled, no 100
    Continue is sent, and what follows is not read into it.
    """
    parking = Parking()
    channel, transport = connect(parking)
    channel.refuse_bodies = True
    channel.dataReceived(
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"
    )
    assert parking.requests == []
    assert transport.value() == b""
    assert channel.requests[0].content is None


def test_the_target_hook_sees_targets_that_are_not_paths_first() -> None:
    """
    ``requestReceived`` gets each request's target before anything reads
    it: a target that is not a path is handled as the hook says; a path
    as it came.
    """
    parking = Parking()
    channel, _ = connect(parking)
    Targeted.seen = []
    channel.dataReceived(b"GET http://host/x?y HTTP/1.1\r\nHost: x\r\n\r\n")
    (request,) = parking.requests
    assert Targeted.seen == [b"http://host/x?y"]
    assert (request.uri, request.path, request.postpath) == (b"/hooked", b"/hooked", [b"hooked"])
    request.write(b"")
    request.finish()
    channel.dataReceived(b"GET /x?y HTTP/1.1\r\nHost: x\r\n\r\n")
    assert Targeted.seen == [b"http://host/x?y"]
    assert (parking.requests[1].uri, parking.requests[1].path) == (b"/x?y", b"/x")


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
    ],
)
def test_which_requests_take_a_prerendered_answer(head: bytes, expected: bool) -> None:
    """
    Only a GET on a connection that stays open after it (HTTP/1.1 without
    ``Connection: close``: the channel knows once the headers are in) may
    be answered with bytes rendered for another request.
    """
    parking = Parking()
    channel, _ = connect(parking)
    channel.dataReceived(head)
    assert prerenderable(parking.requests[0]) is expected


def test_a_prerendered_answer_stands_for_the_requests_own() -> None:
    """
    A request marked as written and given a whole answer on its transport
    writes nothing of its own when finished, and its connection goes on to
    the next request.
    """
    parking = Parking()
    channel, transport = connect(parking)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    first = parking.requests[0]
    assert not started_writing(first)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"
    assert send_prerendered(first, answer) is transport
    assert started_writing(first)
    first.finish()
    assert transport.value() == answer
    assert len(parking.requests) == 2
    parking.requests[1].write(b"x")
    assert started_writing(parking.requests[1])


def test_a_request_whose_connection_is_lost_has_no_channel() -> None:
    """
    A request whose client went away has no channel left (so its producer
    is gone with the connection).
    """
    parking = Parking()
    channel, _ = connect(parking)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    (request,) = parking.requests
    assert not connection_gone(request)
    request.notifyFinish().addErrback(lambda _: None)
    channel.connectionLost(Failure(ConnectionError()))
    assert connection_gone(request)


class Sender(Protocol):
    """
    Writes as ``write`` does as soon as it is connected, then notes what
    the peer can read at once and whether anything is left buffered, and
    closes (after sending what is left).
    """

    def __init__(
        self,
        write: Callable[[Any], None],
        peer: socket.socket,
        done: "Deferred[tuple[Optional[bytes], bool]]",
    ) -> None:
        self.write = write
        self.peer = peer
        self.done = done

    def connectionMade(self) -> None:
        self.write(self.transport)
        buffered = bool(self.transport.dataBuffer or self.transport._tempDataBuffer)
        try:
            arrived: Optional[bytes] = self.peer.recv(100, socket.MSG_DONTWAIT)
        except BlockingIOError:
            arrived = None
        self.transport.loseConnection()
        self.done.callback((arrived, buffered))


async def sent(
    write: Callable[[Any], None], wrapping: Optional[type[WrappingFactory]] = None
) -> tuple[Optional[bytes], bool, bytes]:
    """
    :param wrapping: wraps the connection's protocol, as TLS does.
    :return: what a peer could read at once of what ``write`` wrote on a
        new TCP connection, whether some was left buffered, and all it
        read in the end.
    """
    from twisted.internet import reactor

    done: Deferred[tuple[Optional[bytes], bool]] = Deferred()
    peer = socket.socket()
    factory: Any = Factory.forProtocol(lambda: Sender(write, peer, done))
    if wrapping is not None:
        factory = wrapping(factory)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        peer.connect(("127.0.0.1", port.getHost().port))
        arrived, buffered = await within(done)
        got = [arrived or b""]

        def read() -> bool:
            try:
                chunk = peer.recv(100, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            got.append(chunk)
            return chunk == b""

        await wait_until(read)
        return arrived, buffered, b"".join(got)
    finally:
        peer.close()
        await port.stopListening()


@pytest.mark.parametrize("now", [True, False])
@pytest_twisted.ensureDeferred
async def test_send_now_sends_before_the_reactor_looks(now: bool) -> None:
    """
    A TCP transport's ``doWrite`` sends what it holds at once: the peer
    can read it before the reactor's next turn (without it, not yet).
    """

    def write(transport: Any) -> None:
        transport.write(b"hello")
        if now:
            send_now(transport)

    arrived, _, everything = await sent(write)
    assert arrived == (b"hello" if now else None)
    assert everything == b"hello"


class Closer(Protocol):
    """Writes, closes, and sends at once; notes when the connection is gone."""

    def __init__(self, lost: "Deferred[None]") -> None:
        self.lost = lost

    def connectionMade(self) -> None:
        self.transport.write(b"bye")
        self.transport.loseConnection()
        send_now(self.transport)

    def connectionLost(self, reason: Failure = None) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_send_now_leaves_a_closing_connection_to_the_reactor() -> None:
    """
    ``doWrite`` on a closing connection sends what it holds and says the
    connection is done, without closing it: the reactor, asked to look
    again, closes it.
    """
    from twisted.internet import reactor

    lost: Deferred[None] = Deferred()
    peer = socket.socket()
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: Closer(lost)), interface="127.0.0.1")
    try:
        peer.connect(("127.0.0.1", port.getHost().port))
        await within(lost, 10)
        peer.settimeout(10)
        assert peer.recv(100) == b"bye"
    finally:
        peer.close()
        await port.stopListening()


class Starred(HookedRequest):
    """Answers a target of ``*`` in its own way."""

    def asterisk(self) -> None:
        self.setResponseCode(418)
        self.finish()


def test_the_asterisk_hook_answers_a_target_of_star() -> None:
    """
    A request whose target is ``*`` is answered by the hook, before any
    resource sees it (``Request._handleStar``).
    """
    parking = Parking()
    site = Site(parking, requestFactory=Starred)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4711))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 418 ")
    assert parking.requests == []


def test_reads_do_not_restart_the_timeout() -> None:
    """
    The connection's timeout runs from its opening to the end of a
    request's head, whatever trickles in meanwhile; a request's handling
    stops it, and its answer starts it anew.
    """
    from twisted.internet.task import Clock

    clock = Clock()
    parking = Parking()
    site = Site(parking, requestFactory=Targeted)
    site.protocol = Recording  # type: ignore[assignment]
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4711))
    channel.callLater = clock.callLater
    channel.timeOut = 10
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(60)
    (request,) = parking.requests
    request.write(b"")
    request.finish()
    for _ in range(9):
        channel.dataReceived(b"G")
        clock.advance(1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


class First(Protocol):
    """Reads one message, then hands the connection over to ``Second``."""

    def __init__(self, second: "Second") -> None:
        self.second = second
        self.got: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.got.append(data)
        hand_over(self.transport, self.second, b"early:" + data)


class Second(Protocol):
    """Takes over: notes what reaches it, and when the connection goes."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.made = 0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.got.append(data)
        if b"bye" in b"".join(self.got):
            self.transport.write(b"ok")
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        self.lost.callback(None)


@pytest.mark.parametrize("wrapped", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_connection_handed_over_delivers_to_its_new_protocol(wrapped: bool) -> None:
    """
    Once handed over, a TCP connection's protocol is the new one (also
    behind a wrapping protocol, as TLS is): it is connected once, gets what
    arrived before it took over, then all that arrives after, writes on
    the same connection, and hears of its end; the first protocol hears
    nothing more.
    """
    from twisted.internet import reactor

    second = Second()
    first = First(second)
    factory: Any = Factory.forProtocol(lambda: first)
    if wrapped:
        factory = WrappingFactory(factory)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
    try:
        peer.sendall(b"one")
        await wait_until(lambda: second.got)
        peer.sendall(b"two bye")
        await within(second.lost)
        assert peer.recv(100) == b"ok"
        assert first.got == [b"one"]
        assert b"".join(second.got) == b"early:onetwo bye"
        assert second.made == 1
    finally:
        peer.close()
        await port.stopListening()


@pytest.mark.parametrize(
    "before, arrived, buffered",
    [(b"", b"hello", False), (b"first ", None, True)],
)
@pytest_twisted.ensureDeferred
async def test_send_goes_straight_to_the_socket_unless_something_waits(
    before: bytes, arrived: Optional[bytes], buffered: bool
) -> None:
    """
    ``send`` on a TCP transport with nothing buffered puts the bytes on
    its socket at once (the peer reads them before the reactor's next
    turn, nothing is left in the buffer); after a write still buffered,
    it queues behind it, and the peer reads both in order.
    """

    def write(transport: Any) -> None:
        if before:
            transport.write(before)
        send(transport, b"hello")

    assert await sent(write) == (arrived, buffered, before + b"hello")


class Bracketing(ProtocolWrapper):
    """
    A wrapping protocol that changes what is written on the connection
    underneath, as TLS does.
    """

    def write(self, data: bytes) -> None:
        self.transport.write(b"[" + data + b"]")


class BracketingFactory(WrappingFactory):
    """
    Wraps each connection's protocol in :class:`Bracketing`.
    """

    protocol = Bracketing


@pytest_twisted.ensureDeferred
async def test_send_on_a_wrapping_transport_writes_through_the_wrapper() -> None:
    """
    ``send`` on a transport that wraps a TCP connection (as TLS does) writes
    through the wrapper: nothing reaches the socket underneath as it is
    (under TLS that would be plain text); and such a transport has no
    socket of its own, where a TCP transport has.
    """
    sockets: list[Optional[socket.socket]] = []

    def write(transport: Any) -> None:
        sockets.append(own_socket(transport))
        send(transport, b"hello")

    assert (await sent(write, BracketingFactory))[2] == b"[hello]"
    assert sockets == [None]
    assert (await sent(write))[2] == b"hello"
    assert isinstance(sockets[1], socket.socket)


def test_send_without_a_socket_writes_as_usual() -> None:
    """
    A transport without a socket of its own (TLS, or a test's) gets the
    bytes through its usual ``write``.
    """
    transport = StringTransport()
    send(transport, b"hello")
    assert transport.value() == b"hello"
