"""
Tests of how answers are dressed: every route of both APIs answers
OPTIONS with its CORS headers alone and carries them (and the cache
headers) on GET, for any page by default, for pages of the origins of
--cors only, or for none; JSON is written one way.
"""

import math
import socket
import urllib.error
import urllib.request
from typing import Callable

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from blip.meters import Meter, Meters
from blip.model import Point
from blip.web.answers import LEGACY, NO_ORIGIN, V1, Cors, encode
from tests.conftest import TIMEOUT, Served, read_response, wait_until

LEGACY_PATHS = [
    "/last", "/last/1", "/last/1/100", "/since/1", "/since/1/1", "/range/1/2", "/range/1/1/2",
    "/aggregate/1/2/3", "/aggregate/1/1/2/3", "/aggregate_hourly/1/2/3", "/aggregate_hourly/1/1/2/3",
    "/hourly/1/2", "/hourly/1/1/2", "/minutely/1/2", "/minutely/1/1/2", "/usage/5", "/usage/1/5",
    "/blip", "/blip/1",
]
EXPECTED = {
    b"Access-Control-Allow-Origin": [b"*"],
    b"Access-Control-Allow-Methods": [b"GET"],
    b"Access-Control-Allow-Headers": [b"origin, x-requested-with, accept"],
    b"Access-Control-Max-Age": [b"60"],
    b"Cache-Control": [b"max-age=0, must-revalidate"],
}


@pytest.mark.parametrize("path", LEGACY_PATHS)
@pytest_twisted.ensureDeferred
async def test_headers_and_options(serve: Callable[..., Served], path: str) -> None:
    """
    Every API route answers OPTIONS with the CORS headers, and carries them
    and the cache headers on GET too.
    """
    site = serve(Meters([Meter(1)]), memory=True)
    await site.store.insert([Point(1, 1_700_000_000_000, 1000)])
    code, headers, content = await site.get(path, method="OPTIONS")
    assert (code, content) == (200, b"")
    assert headers.getRawHeaders(b"Content-Length") == [b"0"]
    assert not headers.hasHeader(b"Content-Type") and not headers.hasHeader(b"Transfer-Encoding")
    assert not headers.hasHeader(b"Allow")
    for name, value in EXPECTED.items():
        assert headers.getRawHeaders(name) == value
    if not path.startswith("/blip"):
        code, headers, _ = await site.get(path)
        for name, value in EXPECTED.items():
            assert headers.getRawHeaders(name) == value


def test_both_apis_share_their_headers() -> None:
    """
    /api/v1 sends the legacy routes' CORS and caching headers, but for
    also letting a page send ``Last-Event-ID``.
    """
    legacy, modern = dict(LEGACY.headers), dict(V1.headers)
    allowed = b"Access-Control-Allow-Headers"
    assert modern.pop(allowed) == legacy.pop(allowed) + b", last-event-id"
    assert modern == legacy
    assert [name for name, _ in LEGACY.headers] == [name for name, _ in V1.headers]


def test_json_is_compact_and_finite() -> None:
    """
    JSON answers have no spaces, and a number JSON cannot hold is an
    error rather than an answer no client can read.
    """
    assert encode({"a": [1, 2.5, None]}) == b'{"a":[1,2.5,null]}'
    with pytest.raises(ValueError):
        encode({"watts": math.inf})


PAGE = "https://power.example.org"
ALLOWED = Cors(frozenset({PAGE.encode(), b"http://localhost:8000"}))


@pytest.mark.parametrize("path", ["/last/1", "/since/1/0", "/api/v1/meters/1", "/api/v1/meters/9"])
@pytest_twisted.ensureDeferred
async def test_cors_origins_are_answered_one_by_one(serve: Callable[..., Served], path: str) -> None:
    """
    With --cors origins, a page of one of them is answered with its own
    origin (and the other CORS headers), on GET and on OPTIONS; a page of
    another origin, or a client without one, gets no CORS header at all;
    every answer, errors too, says it varies by Origin; caching headers
    are as ever.
    """
    site = serve(Meters([Meter(1)]), cors=ALLOWED)
    await site.store.insert([Point(1, 1_700_000_000_000, 1000)])
    for method in ("GET", "OPTIONS"):
        _, headers, _ = await site.get(path, {"Origin": PAGE}, method=method)
        assert headers.getRawHeaders(b"Access-Control-Allow-Origin") == [PAGE.encode()], (path, method)
        assert headers.getRawHeaders(b"Access-Control-Max-Age") == [b"60"]
        assert headers.getRawHeaders(b"Vary") == [b"Origin"]
        for origin in ("https://evil.example", None):
            _, headers, _ = await site.get(path, {"Origin": origin} if origin else {}, method=method)
            assert not any(
                name.lower().startswith(b"access-control-") for name, _ in headers.getAllRawHeaders()
            ), (path, method, origin)
            assert headers.getRawHeaders(b"Vary") == [b"Origin"]
            assert headers.getRawHeaders(b"Cache-Control") == [b"max-age=0, must-revalidate"]


@pytest_twisted.ensureDeferred
async def test_no_cors_means_no_cors_header(serve: Callable[..., Served]) -> None:
    """
    With --cors none (the default with --allow), no answer lets a page of
    another origin read it, whatever Origin it sends.
    """
    site = serve(Meters([Meter(1)]), cors=NO_ORIGIN)
    await site.store.insert([Point(1, 1_700_000_000_000, 1000)])
    for path in ("/last/1", "/since/1/0", "/api/v1/meters/1"):
        code, headers, _ = await site.get(path, {"Origin": PAGE})
        assert code == 200
        assert not headers.hasHeader(b"Access-Control-Allow-Origin")
        assert not headers.hasHeader(b"Vary")
        assert headers.getRawHeaders(b"Cache-Control") == [b"max-age=0, must-revalidate"]


@pytest_twisted.ensureDeferred
async def test_parked_long_polls_get_their_own_origin(serve: Callable[..., Served]) -> None:
    """
    Long-polls parked by pages of different origins, answered by one
    blip on keep-alive connections (a pre-rendered answer), each get the
    CORS headers of their own origin.
    """
    site = serve(Meters([Meter(1)]), cors=ALLOWED)
    origins = [PAGE, "http://localhost:8000", "https://evil.example", None, PAGE]
    sockets = []
    for origin in origins:
        s = socket.create_connection(("127.0.0.1", site.port), timeout=TIMEOUT)
        s.sendall(b"GET /blip/1 HTTP/1.1\r\nHost: x\r\n" + (
            b"Origin: %s\r\n" % origin.encode() if origin else b"") + b"\r\n")
        sockets.append(s)
    await wait_until(lambda: site.hub.waiting == len(origins))
    site.hub.publish(Point(1, 1_700_000_000_000, 1000))
    try:
        for origin, s in zip(origins, sockets):
            head, body = await deferToThread(read_response, s)
            assert body == b"[1700000000000,1000]"
            allowed = [line for line in head.split(b"\r\n") if line.startswith(b"Access-Control-Allow-Origin")]
            expected = origin if origin in (PAGE, "http://localhost:8000") else None
            assert allowed == ([b"Access-Control-Allow-Origin: " + expected.encode()] if expected else [])
            assert b"\r\nVary: Origin\r\n" in head + b"\r\n"
    finally:
        for s in sockets:
            s.close()


def test_cors_from_the_daemon(start_daemon, database) -> None:
    """
    With --allow and no --cors, the daemon lets no page of another origin
    read its answers; with --cors it answers the origins given; without
    --allow, any page, as the original.
    """

    def allowed_origin(daemon, origin: str):
        request = urllib.request.Request(daemon.url("/last/1"), headers={"Origin": origin})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                return answer.headers.get("Access-Control-Allow-Origin")
        except urllib.error.HTTPError as e:
            return e.headers.get("Access-Control-Allow-Origin")

    daemon = start_daemon("--db", database.dsn, "--allow", "127.0.0.0/8")
    daemon.wait_for("database ready")
    assert allowed_origin(daemon, PAGE) is None
    daemon.stop()
    daemon = start_daemon("--db", database.dsn, "--allow", "127.0.0.0/8", env={"BLIP_CORS": PAGE})
    daemon.wait_for("database ready")
    assert allowed_origin(daemon, PAGE) == PAGE
    assert allowed_origin(daemon, "https://evil.example") is None
    daemon.stop()
    daemon = start_daemon("--db", database.dsn)
    daemon.wait_for("database ready")
    assert allowed_origin(daemon, PAGE) == "*"
