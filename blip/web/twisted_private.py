"""
All that blipserver relies on of Twisted Web beyond its public API, in one
place: each reliance is pinned by ``tests/web/test_twisted_private.py``, so
that a Twisted upgrade that changes one fails a test, not the daemon.

- :class:`HookedChannel`: which line of a request was too long, the
  answer to a request Twisted cannot parse or whose head is over its caps
  (``HTTPChannel``'s private ``_respondToBadRequestAndDisconnect``, and
  its counts of a head), and a request whose head announces a body, with
  its method, target and length, once the head is whole
  (``HTTPChannel._command``, ``_path`` and ``length``); and its idle timeout, not reset by each read, as a
  deadline for each request's head (``HTTPChannel.dataReceived``).
- :class:`HookedRequest`: a request target that is not a path, before
  the request is handled (``Request.requestReceived``, "not intended for
  users"), and the answer to a target of ``*`` (``Request._handleStar``).
- :func:`send_prerendered`, :func:`prerenderable` and
  :func:`started_writing`: a whole answer rendered once and written as it
  is to many clients, around the request's own writing
  (``Request.startedWriting``, ``HTTPChannel.persistent``).
- :func:`send_now`: a connection's buffer sent at once
  (``FileDescriptor.doWrite``).
- :func:`connection_gone`: a request whose connection is lost has no
  channel.
- :func:`hand_over`: a connection's protocol replaced by another, which
  the connection delivers to from then on (a TCP transport's
  ``protocol``, or the ``wrappedProtocol`` of a wrapping one, as TLS is).
- :func:`send`: bytes sent on a connection's socket at once when nothing
  waits in its buffer (a TCP transport's ``socket``, ``dataBuffer`` and
  ``_tempDataBuffer``).
- :func:`own_socket`: a connection's socket, when the transport reads and
  writes it itself (a TCP transport's ``socket``; a wrapping transport,
  as TLS is, has none of its own).
"""

import socket
from typing import Any, Optional

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IProtocol
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.server import Request


class HookedChannel(HTTPChannel):
    """
    Twisted's HTTP connection, with its own answers replaced by hooks, and
    a hook where a request's head is whole.

    Its idle timeout (``timeOut``) is a deadline for each request's head:
    HTTPChannel starts it when the connection opens and after each
    answer, and stops it while a request is handled, but it also restarts
    it at every read, so that a client sending a byte now and then would
    hold its connection for ever. Here reads do not restart it.
    """

    def dataReceived(self, data: bytes) -> None:
        LineReceiver.dataReceived(self, data)

    def line_too_long(self, request_line: bool, line: bytes) -> None:
        """
        A line longer than ``MAX_LENGTH`` arrived (the default answer:
        Twisted's, closing the connection).

        :param request_line: whether it is the request line, not a header.
        :param line: what arrived of it.
        """
        super().lineLengthExceeded(line)

    def bad_request(self) -> None:
        """
        A request Twisted cannot parse arrived (the default answer:
        Twisted's bare 400, closing the connection).
        """
        super()._respondToBadRequestAndDisconnect()

    def head_too_large(self) -> None:
        """
        A request has more than ``maxHeaders`` headers, or its request line
        and headers more than ``totalHeadersSize`` bytes (the default
        answer: as to a request Twisted cannot parse).
        """
        self.bad_request()

    def body_announced(self, method: bytes, target: bytes, length: Optional[int]) -> bool:
        """
        A request's line and headers are whole and announce a body (a
        ``Content-Length`` over 0, or chunks), none of which is read yet.

        :param method: its method.
        :param target: its request target, as it came.
        :param length: the body's ``Content-Length``; None for chunks.
        :return: whether to go on with the request; if not, the hook has
            answered it and closed the connection.
        """
        return True

    def lineLengthExceeded(self, line: bytes) -> None:
        # HTTPChannel makes a connection's request when its request line
        # arrives, and forgets it once answered; lines are not read while a
        # request is handled (pipelined ones wait), so no request means the
        # request line.
        self.line_too_long(not self.requests, line)

    def _respondToBadRequestAndDisconnect(self) -> None:
        if (
            self._receivedHeaderCount > self.maxHeaders
            or self._receivedHeaderSize > self.totalHeadersSize
        ):
            self.head_too_large()
        else:
            self.bad_request()

    def allHeadersReceived(self) -> None:
        # What the headers say of a body: length 0 for none, None for
        # chunks, else its length.
        if self.length == 0 or self.body_announced(self._command, self._path, self.length):
            super().allHeadersReceived()


class HookedRequest(Request):
    """
    Twisted's request, whose target, unless it is a path, passes through a
    hook before anything reads it, and whose answer to a target of ``*``
    is a hook.
    """

    def target(self, target: bytes) -> bytes:
        """
        :param target: a request target that does not start with ``/``.
        :return: the request target to handle instead (by default
            ``target``).
        """
        return target

    def asterisk(self) -> None:
        """
        Answer a request whose target is ``*`` (by default as Twisted does:
        200 to ``OPTIONS``, an empty 405 to anything else).
        """
        super()._handleStar()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not path.startswith(b"/"):
            path = self.target(path)
        super().requestReceived(command, path, version)

    def _handleStar(self) -> None:
        self.asterisk()


def prerenderable(request: Request) -> bool:
    """
    :return: whether the answer to ``request`` may be a pre-rendered one: a
        GET on a persistent HTTP/1.1 connection (no ``Connection: close``
        to add, a body to send).
    """
    return (
        request.method == b"GET"
        and request.clientproto == b"HTTP/1.1"
        and getattr(request.channel, "persistent", False)
    )


def send_prerendered(request: Request, answer: bytes) -> Any:
    """
    Write ``answer``, a whole HTTP answer (status line, headers and body)
    of a :func:`prerenderable` request, as it is; the request is to be
    finished as usual, and writes nothing more.

    :return: the connection's transport.
    """
    request.startedWriting = 1
    transport = request.channel.transport
    assert transport is not None  # set while the request is answered
    transport.write(answer)
    return transport


def started_writing(request: IRequest) -> bool:
    """
    :return: whether the status line and headers of the answer to
        ``request`` are written already.
    """
    return bool(getattr(request, "startedWriting", False))


def send_now(transport: Any) -> None:
    """
    Send what ``transport`` holds now, rather than when the reactor next
    looks at the connection: during a fan-out the first clients need not
    wait for the last. What does not fit stays buffered and is sent as
    usual; a connection that this finds closing or broken is left to the
    reactor, which closes it on its next look.
    """
    send = getattr(transport, "doWrite", None)
    if send is not None and send() is not None:
        transport.startWriting()


def connection_gone(request: IRequest) -> bool:
    """
    :return: whether the connection of ``request`` is lost.
    """
    return getattr(request, "channel", None) is None


def hand_over(transport: Any, protocol: IProtocol, data: bytes) -> None:
    """
    Make ``protocol`` the one ``transport`` delivers to, in place of the
    one it was made with, connect it, and give it ``data``, what arrived
    before it took over.
    """
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    if data:
        protocol.dataReceived(data)


def own_socket(transport: Any) -> Optional[socket.socket]:
    """
    :return: the socket ``transport`` reads and writes itself, or None
        (a transport wrapping another, as TLS does, or none at all).
    """
    sock = getattr(transport, "socket", None)
    return sock if isinstance(sock, socket.socket) and isinstance(transport, FileDescriptor) else None


def send(transport: Any, data: bytes) -> None:
    """
    Write ``data`` on ``transport``: straight to its socket when nothing
    waits in its buffer (one system call, rather than a write when the
    reactor next looks at the connection), what does not fit buffered as
    usual. A connection that this finds broken, or one without a socket of
    its own (TLS), is left to the transport's usual writing.
    """
    sock = own_socket(transport)
    if sock is None or transport.dataBuffer or transport._tempDataBuffer or not transport.connected:
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Broken: the transport's own write finds out, and closes it.
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])
