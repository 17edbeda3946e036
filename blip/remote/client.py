"""
An HTTP client of another blipserver's ``/api/v1``, over HTTP or HTTPS:
persistent connections, a bearer token when one is given, a time limit on
every request, and answers read only up to a size (a server that sends
more is cut off). Names are resolved and certificates checked without
blocking (Twisted's Agent: the system's resolver in a thread, the
system's certificate authorities, or those of ``SSL_CERT_FILE``).

Errors come in two kinds: :class:`RemoteUnavailable` (no connection, no
answer in time, a 5xx or 429: the server is away or busy, try again
later) and :class:`RemoteRefused` (a 4xx: the server says the request is
wrong; its problem detail is kept).
"""

import json
from io import BytesIO
from typing import Any, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

import blip

#: Seconds a request (sending it and reading the whole answer) may take.
REQUEST_TIMEOUT = 30.0
#: Seconds a connection attempt may take.
CONNECT_TIMEOUT = 10.0
#: Most bytes of an answer read (a page of points is far less).
MAX_ANSWER = 8 << 20
#: Most bytes of an error's answer read.
MAX_ERROR = 16 << 10
#: What the client says it is.
USER_AGENT = f"blipserver/{blip.__version__}".encode()


class RemoteError(Exception):
    """
    A request to another blipserver failed.
    """


class RemoteUnavailable(RemoteError):
    """
    The server could not be reached, did not answer in time, or answered
    that it is away or busy (5xx, 429): try again later.
    """


class RemoteRefused(RemoteError):
    """
    The server refused the request (4xx).

    :param status: its status code.
    :param detail: what it said is wrong.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class UrlError(ValueError):
    """
    A server's URL that cannot be used; the message says why.
    """


def base_url(url: str) -> str:
    """
    Check the URL of a blipserver (where it serves its page: ``/api/v1``
    is below it), such as ``https://power.example/ajax/``.

    :return: the URL without a trailing ``/``.
    :raise UrlError: for anything but an http or https URL with a host
        and no user name, password, query or fragment.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise UrlError(f"not a URL: {url!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlError(f"expected http://HOST[:PORT][/PATH] or https://..., not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise UrlError(f"{url!r}: give the token in a file, not in the URL")
    if parts.query or parts.fragment:
        raise UrlError(f"{url!r}: no query or fragment, only where blipserver is served")
    if port == 0:
        raise UrlError(f"{url!r}: port 0")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def read_token(path: str, option: str) -> str:
    """
    :return: the token in a file (its first line).
    :raise UrlError: when the file cannot be read or holds no token.
    """
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline(4096).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UrlError(f"{option}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not token or not token.isprintable() or " " in token:
        raise UrlError(f"{option}: {path} holds no token (one line, no spaces)")
    return token


class _Collect(Protocol):
    """
    Collects an answer's body, up to ``most`` bytes; more cuts the
    connection and fails.
    """

    def __init__(self, most: int) -> None:
        self.done: Deferred[bytes] = Deferred(self.cancel)
        self.most = most
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.most:
            self.done.errback(RemoteUnavailable(f"answer longer than {self.most} bytes"))
            self.cancel(None)
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(RemoteUnavailable(f"answer cut short: {_why(reason.value)}"))

    def cancel(self, _: object) -> None:
        """
        Give up reading (the request took too long): cut the connection.
        """
        # A response's body arrives through a push producer.
        producer: Any = self.transport
        if producer is not None:
            producer.stopProducing()


class Client:
    """
    Requests to one blipserver.

    :param reactor: runs the connections and times the requests.
    :param url: where the server is (see :func:`base_url`).
    :param token: a bearer token sent with every request, or None.
    :param timeout: seconds a request may take.
    """

    def __init__(
        self, reactor: Any, url: str, token: Optional[str] = None, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.reactor = reactor
        self.url = base_url(url)
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 2
        self.agent = Agent(reactor, connectTimeout=CONNECT_TIMEOUT, pool=self.pool)
        self._headers = {b"User-Agent": [USER_AGENT], b"Accept": [b"application/json"]}
        if token is not None:
            self._headers[b"Authorization"] = [b"Bearer " + token.encode()]

    async def get(self, path: str, most: int = MAX_ANSWER) -> Any:
        """
        :param path: below the server's URL (``/api/v1/meters``), with its
            query.
        :return: the JSON of a 2xx answer.
        """
        return json.loads(await self._request(b"GET", path, None, None, most))

    async def post(self, path: str, body: bytes, content_type: bytes, most: int = MAX_ANSWER) -> Any:
        """
        :return: the JSON of the 2xx answer to a POST of ``body``.
        """
        return json.loads(await self._request(b"POST", path, body, content_type, most))

    def close(self) -> "Deferred[None]":
        """
        Close the connections kept open.
        """
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed

    async def _request(
        self, method: bytes, path: str, body: Optional[bytes], content_type: Optional[bytes], most: int
    ) -> bytes:
        headers = Headers(dict(self._headers))
        producer = None
        if body is not None:
            assert content_type is not None
            headers.setRawHeaders(b"Content-Type", [content_type])
            producer = FileBodyProducer(BytesIO(body))
        work = Deferred.fromCoroutine(self._exchange(method, path, headers, producer, most))

        def late(result: Any, timeout: float) -> Failure:
            # Whatever the request failed with once cancelled.
            return Failure(RemoteUnavailable(f"no answer from {self.url} in {timeout:g} s"))

        work.addTimeout(self.timeout, self.reactor, onTimeoutCancel=late)
        try:
            return await work
        except RemoteError:
            raise
        except (ConnectError, DNSLookupError, ResponseFailed, ConnectionLost, OSError) as e:
            raise RemoteUnavailable(f"{self.url}: {_why(e)}") from None

    async def _exchange(
        self, method: bytes, path: str, headers: Headers, producer: Any, most: int
    ) -> bytes:
        url = (self.url + path).encode()
        response: IResponse = await self.agent.request(method, url, headers, producer)
        ok = 200 <= response.code < 300
        data = await _collect(response, most if ok else MAX_ERROR)
        if ok:
            return data
        detail = _detail(data) or response.phrase.decode("latin-1", "replace")
        if response.code >= 500 or response.code == 429:
            raise RemoteUnavailable(f"{self.url} answered {response.code}: {detail}")
        raise RemoteRefused(response.code, detail)


def _collect(response: IResponse, most: int) -> "Deferred[bytes]":
    collect = _Collect(most)
    response.deliverBody(collect)
    return collect.done


def _detail(data: bytes) -> str:
    try:
        problem = json.loads(data)
    except ValueError:
        return data[:200].decode("utf-8", "replace").strip()
    if isinstance(problem, dict):
        return str(problem.get("detail") or problem.get("error") or "")[:500]
    return ""


def _why(error: Optional[BaseException]) -> str:
    if isinstance(error, ResponseFailed):
        reasons = [_why(r.value) for r in error.reasons]
        return "; ".join(r for r in reasons if r) or "connection lost"
    if error is None:
        return ""
    return str(error).strip() or type(error).__name__
