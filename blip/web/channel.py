"""
The HTTP connection: what it refuses, in JSON, before a request reaches
the site (a client outside ``--allow`` as it connects, a request line or
header too long, a head with too many headers, a body where no route takes
one, a body too large, a request that cannot be parsed), request targets
in absolute form served like their path, and the asterisk form
(``OPTIONS *``) refused in JSON with any other method.

One route takes a request body, the write API's (``POST
/api/v1/meters/<id>/readings``), of at most
:data:`~blip.web.limits.WRITE_BODY` bytes, kept in memory. Any other body is
refused as its head ends, before any of it is read (``413`` for ``GET``,
``HEAD`` and ``OPTIONS``, ``405`` for other methods, which no route
answers), and the connection closed; so is a body announced longer than
the cap (``413``), and one sent in chunks as soon as it grows past it:
never read whole, never written to a temporary file. Refusals of requests
under ``/api/v1`` are problem documents, as its other errors.
"""

import io
import re
from typing import Any, Optional

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from blip.web.access import forbidden_message
from blip.web.answers import V1_PREFIX
from blip.web.connections import Entry
from blip.web.errors import error_body, refuse
from blip.web.limits import WRITE_BODY
from blip.web.twisted_private import HookedChannel, HookedRequest

#: Longest request target answered; longer ones get 414.
MAX_URI = 8192
#: Most bytes of a refused request read (and thrown away) before closing,
#: so that the client reads the answer instead of a connection reset.
MAX_DRAIN = 1 << 20
#: A ``Host`` header as RFC 9110 spells it, that the router can take (as
#: IDNA: labels of 1 to 63 characters): a name or an address, and maybe a
#: port.
_LABEL = rb"[0-9A-Za-z_~!$&'()*+,;=%-]{1,63}"
_HOST = re.compile(rb"(\[[0-9A-Za-z:.%_~-]*\]|(" + _LABEL + rb"\.)*" + _LABEL + rb"\.?)?(:[0-9]*)?")
#: The methods of the routes: a body on them is too large (413), on any
#: other a method not allowed (405).
METHODS = (b"GET", b"HEAD", b"OPTIONS")
#: The path of the one route that takes a body (with ``POST``): the write
#: API's.
WRITE_PATH = re.compile(rb"/api/v1/meters/[^/]*/readings")


def good_host(host: bytes) -> bool:
    """
    :return: whether ``host``, a ``Host`` header, names a host the router
        can take.
    """
    return _HOST.fullmatch(host) is not None


def closing_answer(
    status: int, message: str, problems: bool = False, allow: Optional[bytes] = None
) -> bytes:
    """
    :param problems: whether the error is a problem document (under
        ``/api/v1``), else a legacy JSON error.
    :param allow: the methods of the ``Allow`` header (of a 405), if any.
    :return: a whole HTTP answer with the error, that closes the
        connection.
    """
    body, media = error_body(status, message, problems)
    head = b"" if allow is None else b"Allow: %s\r\n" % allow
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, RESPONSES.get(status, b"Error"), media, head, len(body), body)
    )


def path_of(target: bytes) -> bytes:
    """
    :return: the path and query of a request target, whether in origin form
        (``/last/1?x``) or in absolute form (``http://host/last/1?x``).
    """
    scheme, found, rest = target.partition(b"://")
    if not (found and scheme.lower() in (b"http", b"https")):
        return target
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    tail = rest[cut:]  # "/last/1", "?query" or nothing
    return tail if tail.startswith(b"/") else b"/" + tail


class Channel(HookedChannel):
    """
    Twisted's HTTP connection, refusing in JSON what it refuses before a
    request reaches the site: a request line longer than Twisted's line
    limit (414, whatever its length), a header line over it (431), more
    headers than :attr:`maxHeaders` or a head over
    :attr:`totalHeadersSize` bytes (431), a request with a body where no
    route takes one (413 or 405) or a body too large (413), and a
    malformed request (400).

    After a 414 or a 431 for a long line the rest of the request is read
    and thrown away (up to :data:`MAX_DRAIN` bytes) before the connection
    closes: closing with unread data would reset the connection, and the
    client would see the reset rather than the answer.
    """

    #: Request line plus headers; above Twisted's 16 KiB so that a request
    #: whose line alone is under the line limit reaches the site (414).
    totalHeadersSize = 32768
    #: Headers of one request (Apache's default cap).
    maxHeaders = 100
    #: The client's connection: set before any of it is read.
    transport: ITransport
    #: This connection's place among the open ones, left when it closes.
    entry: Optional[Entry] = None
    _drained: Optional[int] = None
    _tail = b""
    _host: Any = None

    def getHost(self) -> Any:
        # Every request asks for its connection's local address: one
        # system call per request, for an address that does not change.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def dataReceived(self, data: bytes) -> None:
        if self._drained is None:
            super().dataReceived(data)
        else:
            self._drain(data)

    def line_too_long(self, request_line: bool, line: bytes) -> None:
        if request_line:
            self._answer(414, f"request target longer than {MAX_URI} bytes")
        else:
            self._answer(431, "request header field too large")
        self._drained = 0
        self._drain(line)

    def bad_request(self) -> None:
        self._answer(400, "malformed HTTP request")
        self.loseConnection()

    def head_too_large(self) -> None:
        self._answer(431, "request header fields too large")
        self.loseConnection()

    def body_announced(self, method: bytes, target: bytes, length: Optional[int]) -> bool:
        path = path_of(target).partition(b"?")[0]
        problems = path == V1_PREFIX or path.startswith(V1_PREFIX + b"/")
        writable = WRITE_PATH.fullmatch(path) is not None
        if method == b"POST" and writable:
            if length is None or length <= WRITE_BODY:
                return True
            self._answer(413, f"request body larger than {WRITE_BODY} bytes", problems)
        elif method in METHODS:
            self._answer(413, f"a {method.decode()} request has no body", problems)
        else:
            allow = b", ".join(METHODS + ((b"POST",) if writable else ()))
            self._answer(405, "method not allowed", problems, allow)
        self.loseConnection()
        # Whatever more arrives is thrown away.
        self._drained = 0
        return False

    def refuse_body(self, message: str) -> None:
        """
        Refuse the request whose body, sent in chunks, grew too large (see
        :class:`TargetRequest`): answer 413 at once, then read and throw
        away the rest, as after a 414, and close.
        """
        self._answer(413, message, problems=True)
        self._drained = 0

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if self.entry is not None:
            self.entry.leave()
            self.entry = None

    def _drain(self, data: bytes) -> None:
        assert self._drained is not None
        # TCP and TLS transports have it; ITransport does not declare it.
        if getattr(self.transport, "disconnecting", False):
            return
        self._drained += len(data)
        seen = self._tail + data
        if b"\r\n\r\n" in seen or b"\n\n" in seen or self._drained > MAX_DRAIN:
            self.loseConnection()
        self._tail = seen[-3:]

    def _answer(
        self, status: int, message: str, problems: bool = False, allow: Optional[bytes] = None
    ) -> None:
        self.transport.write(closing_answer(status, message, problems, allow))


class Forbidden(Protocol):
    """
    A connection from a client outside ``--allow``: answered ``403`` in
    JSON as it opens, and closed, without reading a byte of it.

    :param entry: its place among the open connections.
    """

    def __init__(self, entry: Entry) -> None:
        self.entry = entry

    def connectionMade(self) -> None:
        assert self.transport is not None and self.entry.forbidden is not None
        self.transport.write(closing_answer(403, forbidden_message(self.entry.forbidden)))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.entry.leave()


class TargetRequest(HookedRequest):
    """
    A request whose target may be in absolute form (RFC 9112, 3.2.2:
    ``GET http://host/last/1``), which a server must accept: the path and
    query are what count. The asterisk form (``*``) is for ``OPTIONS``
    alone: Twisted answers ``OPTIONS *`` itself, and any other method on
    it gets 405 in JSON. Its body (the channel lets through only the write
    API's) is kept in memory, and refused with 413 as soon as it grows
    past :attr:`max_body` bytes.
    """

    #: Most bytes of a body.
    max_body = WRITE_BODY
    _received = 0
    _refused = False

    def asterisk(self) -> None:
        if self.method == b"OPTIONS":
            super().asterisk()
            return
        self.setHeader(b"Allow", b"OPTIONS")
        self.write(refuse(self, 405, "only OPTIONS applies to *"))
        self.finish()

    def target(self, target: bytes) -> bytes:
        return path_of(target)

    def gotLength(self, length: Optional[int]) -> None:
        super().gotLength(length)
        # Twisted keeps a body of 100 KB or more (or of unknown length) in
        # a temporary file; one that fits under the cap stays in memory.
        if not isinstance(self.content, io.BytesIO):
            if self.content is not None:
                self.content.close()
            self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        self.content = io.BytesIO()
        message = f"request body larger than {self.max_body} bytes"
        if isinstance(self.channel, Channel):
            self.channel.refuse_body(message)
        elif self.channel is not None:
            self.channel.loseConnection()
