"""
The HTTP connection: what it refuses, in JSON, before a request reaches
the site (a request line or header too long, a request that cannot be
parsed), and request targets in absolute form served like their path.
"""

from typing import Any, Optional

from twisted.internet.interfaces import ITransport
from twisted.web.http import RESPONSES

from blip.web.errors import legacy_body
from blip.web.twisted_private import HookedChannel, HookedRequest

#: Longest request target answered; longer ones get 414.
MAX_URI = 8192
#: Most bytes of a refused request read (and thrown away) before closing,
#: so that the client reads the answer instead of a connection reset.
MAX_DRAIN = 1 << 20


class Channel(HookedChannel):
    """
    Twisted's HTTP connection, refusing in JSON what it refuses before a
    request reaches the site: a request line longer than Twisted's line
    limit (414, whatever its length), a header line over it (431), and a
    malformed request (400).

    After a 414 or 431 the rest of the request is read and thrown away (up
    to :data:`MAX_DRAIN` bytes) before the connection closes: closing with
    unread data would reset the connection, and the client would see the
    reset rather than the answer.
    """

    #: Request line plus headers; above Twisted's 16 KiB so that a request
    #: whose line alone is under the line limit reaches the site (414).
    totalHeadersSize = 32768
    #: The client's connection: set before any of it is read.
    transport: ITransport
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

    def _answer(self, status: int, message: str) -> None:
        body = legacy_body(message)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, RESPONSES.get(status, b"Error"), len(body), body)
        )


class TargetRequest(HookedRequest):
    """
    A request whose target may be in absolute form (RFC 9112, 3.2.2:
    ``GET http://host/last/1``), which a server must accept: the path and
    query are what count.
    """

    def target(self, target: bytes) -> bytes:
        scheme, found, rest = target.partition(b"://")
        if not (found and scheme.lower() in (b"http", b"https")):
            return target
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        tail = rest[cut:]  # "/last/1", "?query" or nothing
        return tail if tail.startswith(b"/") else b"/" + tail
