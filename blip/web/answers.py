"""
How every answer of the HTTP API is dressed: the CORS and caching headers
(the legacy routes' and, allowing ``Last-Event-ID`` too, ``/api/v1``'s),
the header of answers made of raw points once some were dropped, the one
JSON writer, and the empty answer of ``OPTIONS``.

Which web pages' scripts may read the answers (``--cors``) is the site's
:class:`Cors`, set on each request as it arrives: any page (``*``, as the
original), none, or the pages of some origins, each answered with its own
origin.
"""

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional

from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.server import version

#: Where the modern API lives; its errors are problem documents.
V1_PREFIX = b"/api/v1"

HeaderPairs = tuple[tuple[bytes, bytes], ...]


def _cors(request_headers: bytes) -> HeaderPairs:
    return (
        (b"Access-Control-Allow-Origin", b"*"),
        (b"Access-Control-Allow-Methods", b"GET"),
        (b"Access-Control-Allow-Headers", request_headers),
        (b"Access-Control-Max-Age", b"60"),
        (b"Cache-Control", b"max-age=0, must-revalidate"),
    )


@dataclass(frozen=True, slots=True)
class Style:
    """
    What an API adds to each of its answers.

    :param headers: the CORS and caching headers, in order, as answered
        to a page of any origin.
    :param allow: the ``Allow`` header of its ``OPTIONS`` and ``405``
        answers; None for none.
    :param problems: whether its errors are problem documents (RFC 9457)
        rather than the legacy ``{"error": message}``.
    """

    headers: HeaderPairs
    allow: Optional[bytes] = None
    problems: bool = False


_REQUEST_HEADERS = b"origin, x-requested-with, accept"
#: The original blipserver's routes.
LEGACY = Style(_cors(_REQUEST_HEADERS))
#: ``/api/v1``, whose live stream a browser resumes with ``Last-Event-ID``.
V1 = Style(_cors(_REQUEST_HEADERS + b", last-event-id"), b"GET, HEAD, OPTIONS", problems=True)


_ALLOW_ORIGIN = b"Access-Control-Allow-Origin"
_VARY = ((b"Vary", b"Origin"),)


@dataclass(frozen=True)
class Cors:
    """
    Which web pages' scripts may read the answers.

    :param origins: the origins of those pages (``https://example.org``,
        as a browser's ``Origin`` header spells them); None for any page.
    """

    origins: Optional[frozenset[bytes]] = None
    _cached: dict[tuple[Style, Optional[bytes]], HeaderPairs] = field(
        default_factory=dict, compare=False, repr=False
    )

    def headers(self, style: Style, request: IRequest) -> HeaderPairs:
        """
        :return: the CORS and caching headers of ``style`` for ``request``:
            for an origin allowed, that origin (and ``Vary: Origin`` when
            not every origin is); for others, the caching headers alone.
        """
        if self.origins is None:
            return style.headers
        return self.headers_for(style, request.getHeader(b"origin") if self.origins else None)

    def headers_for(self, style: Style, origin: Optional[bytes]) -> HeaderPairs:
        """
        :param origin: the request's ``Origin`` header, if any.
        :return: the CORS and caching headers of ``style`` for a request
            from a page of ``origin`` (see :meth:`headers`).
        """
        if self.origins is None:
            return style.headers
        if origin not in self.origins:
            origin = None
        key = (style, origin)
        found = self._cached.get(key)
        if found is None:
            cache = tuple(pair for pair in style.headers if not pair[0].startswith(b"Access-Control-"))
            if origin is None:
                found = cache + (_VARY if self.origins else ())
            else:
                cors = tuple(pair for pair in style.headers if pair[0].startswith(b"Access-Control-"))
                found = tuple((name, origin if name == _ALLOW_ORIGIN else value) for name, value in cors)
                found += cache + _VARY
            self._cached[key] = found
        return found


#: Any page may read the answers (the original's ``*``).
ANY_ORIGIN = Cors()
#: No page of another origin may.
NO_ORIGIN = Cors(frozenset())


def set_cors(request: IRequest, cors: Cors) -> None:
    """
    Make ``cors`` say which pages may read the answer to ``request``.
    """
    request.blip_cors = cors  # type: ignore[attr-defined]


def cors_of(request: IRequest) -> Cors:
    """
    :return: which pages may read the answer to ``request`` (any, unless
        :func:`set_cors` said otherwise).
    """
    cors: Cors = getattr(request, "blip_cors", ANY_ORIGIN)
    return cors


def dress(request: IRequest, style: Style) -> None:
    """
    Set the CORS and caching headers of ``style``, for the pages that may
    read the answer.
    """
    for name, value in cors_of(request).headers(style, request):
        request.setHeader(name, value)


#: Says, on an answer made of raw points (or counting them), that raw
#: points before this unix ms were dropped (``--keep-raw``): the answer
#: holds what is left. Absent while none were dropped.
RAW_SINCE = b"Blip-Raw-Since"

#: Gives the unix ms before which raw points were dropped, None while none
#: were.
RawSince = Callable[[], Optional[int]]


def kept_for_ever() -> Optional[int]:
    """A :data:`RawSince` of a database whose raw points are all kept."""
    return None


def say_raw_since(request: IRequest, since: Optional[int]) -> None:
    """
    Set :data:`RAW_SINCE` (readable by scripts of other origins) when raw
    points before ``since`` were dropped.
    """
    for name, value in raw_since_headers(since):
        request.setHeader(name, value)


def raw_since_headers(since: Optional[int]) -> HeaderPairs:
    """
    :return: the headers that say raw points before ``since`` were dropped
        (none when none were), in the order :func:`say_raw_since` sets them.
    """
    if since is None:
        return ()
    return ((RAW_SINCE, b"%d" % since), (b"Access-Control-Expose-Headers", RAW_SINCE))


def encode(data: Any) -> bytes:
    """
    :return: ``data`` as compact JSON (no spaces; NaN and infinities are
        refused, as JSON has no such numbers).
    """
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def json_body(request: IRequest, body: bytes, content_type: bytes = b"application/json") -> bytes:
    """
    Say what ``body`` is and how long.

    :return: the body to render: empty for HEAD (whose Content-Length still
        gives the length), as Twisted otherwise logs a warning for each one.
    """
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


def no_content(request: IRequest) -> bytes:
    """
    :return: an empty body, said to be empty (no chunked encoding) and
        without the default text/html type.
    """
    request.setHeader(b"Content-Length", b"0")
    request.defaultContentType = None  # type: ignore[attr-defined]  # server.Request's
    return b""


def options(request: IRequest, style: Style) -> bytes:
    """
    Answer ``OPTIONS``: the headers of ``style`` and nothing else.
    """
    dress(request, style)
    if style.allow is not None:
        request.setHeader(b"Allow", style.allow)
    return no_content(request)


@lru_cache(maxsize=1)
def _date(second: int) -> bytes:
    # The Date header's value, formatted once a second.
    date: bytes = datetimeToString(second)
    return date


def whole_answer(status: int, headers: HeaderPairs, body: bytes, now: float) -> bytes:
    """
    :param headers: its headers after ``Server`` and ``Date``, in order.
    :param now: the unix time it is dated.
    :return: a whole HTTP/1.1 answer, status line, headers and body, as
        Twisted Web writes it on a keep-alive connection.
    """
    return b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n%s\r\n%s" % (
        status,
        RESPONSES.get(status, b"Unknown Status"),
        version,
        _date(int(now)),
        b"".join(b"%s: %s\r\n" % pair for pair in headers),
        body,
    )


def json_answer(
    status: int, headers: HeaderPairs, body: bytes, now: float, content_type: bytes = b"application/json"
) -> bytes:
    """
    :param headers: its CORS, caching and other headers, in order.
    :return: a whole HTTP/1.1 answer of a JSON ``body`` (see
        :func:`whole_answer`), typed and sized as :func:`json_body` says.
    """
    typed = ((b"Content-Type", content_type), (b"Content-Length", b"%d" % len(body)))
    return whole_answer(status, headers + typed, body, now)


def closing(answer: bytes) -> bytes:
    """
    :param answer: a whole answer (:func:`whole_answer`).
    :return: the same answer saying that the connection closes after it,
        as Twisted Web says it.
    """
    return answer.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
