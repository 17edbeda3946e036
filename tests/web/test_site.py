"""
Tests of the site: what is refused before any route, which application
answers which path, and, driven by generated requests — paths through the
daemon, raw request lines, targets, query strings and headers through the
site as the daemon builds it — that nothing it serves answers a 500, logs
a traceback or answers an error in anything but JSON.
"""

import json
import select
import socket
import time
from ipaddress import ip_network
from typing import Callable
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import LoopingCall
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent

from blip.meters import Meters
from blip.model import Point
from blip.web.access import Rules
from blip.web.site import with_backlog
from tests.conftest import Served, exchange, fetch


@pytest.mark.parametrize(
    "path, method, status, error, host",
    [
        ("/since/" + "9" * 9000, "GET", 414, "request target longer than 8192 bytes", "blip"),
        ("/%FF", "GET", 400, "path is not UTF-8", "blip"),
        ("/last/1", "get", 405, "method not allowed", "blip"),
        ("/api/v1/%FF", "GET", 400, "path is not UTF-8", "blip"),
        # Hosts the router cannot take: it answered them 500, or 400 in
        # HTML with a traceback logged.
        ("/since/1/0", "GET", 400, "bad Host header", "a..b"),
        ("/api/v1/meters", "GET", 400, "bad Host header", "x" * 64 + ".example"),
        ("/", "GET", 400, "bad Host header", "\x80"),
        ("/last/1", "GET", 400, "bad Host header", "blip/x"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refusals_before_any_route(
    serve: Callable[..., Served], log_events: EventLoggingObserver,
    path: str, method: str, status: int, error: str, host: str,
) -> None:
    """
    Targets too long, paths that are not UTF-8, a Host header that is not
    a host name or address (RFC 9112 asks for a 400) and methods not in
    upper case are refused before any route, in the error format of the
    path's API, and nothing is logged as a failure.
    """
    site = serve(Meters(), memory=True)
    code, headers, body = await site.get(path, {"Host": host}, method=method)
    assert [e for e in log_events if "log_failure" in e] == []
    assert (code, json.loads(body)["error"]) == (status, error)
    modern = path.startswith("/api/v1")
    assert headers.getRawHeaders(b"Content-Type") == [
        b"application/problem+json" if modern else b"application/json"
    ]


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/api/v1/meters", b"application/json"),
        ("/api/nothing", b"application/problem+json"),
        ("/healthz", b"application/json"),
        ("/metrics", b"text/plain"),
        ("/usage/5", b"application/json"),
        ("/index.html", b"text/html"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_each_path_has_its_application(
    serve: Callable[..., Served], path: str, content_type: bytes
) -> None:
    """
    ``/api/...`` is the modern API (its errors problem documents),
    ``/healthz`` and ``/metrics`` the operators', everything else the
    legacy API and the page.
    """
    site = serve(Meters(), memory=True)
    _, headers, _ = await site.get(path)
    assert headers.getRawHeaders(b"Content-Type")[0].startswith(content_type)


T_FUZZ = 1_700_000_000_000
SEGMENTS = st.one_of(
    st.integers(0, 10**22).map(str),
    st.integers(-10**6, -1).map(str),
    st.sampled_from(["", ".", "..", "%", "%zz", "%00", "%FF", "%2F", "%2e%2e", "%20", "+", "1e9",
                     "0x10", "１２", "NaN", "-0", str(T_FUZZ), "9" * 40, "%C0%AF", "%E2%80%AE"]),
    st.text(max_size=12).map(lambda t: quote(t, safe="")),
    st.binary(max_size=8).map(lambda b: "".join(f"%{c:02X}" for c in b)),
)
ROUTES = st.sampled_from(
    ["blip", "last", "since", "range", "aggregate", "aggregate_hourly", "hourly", "minutely",
     "usage", "", "index.html", "api", "nothing", "static", "last/1/2/3/4/5"]
)
REQUESTS = st.builds(
    lambda method, route, segments, query, version: (
        method + b" /" + "/".join([route, *segments]).encode() + query + b" " + version
        + b"\r\nHost: blip\r\nConnection: close\r\n\r\n"
    ),
    st.sampled_from([b"GET", b"GET", b"GET", b"HEAD", b"OPTIONS", b"POST", b"PUT", b"DELETE",
                     b"PATCH", b"TRACE", b"get", b"X"]),
    ROUTES,
    st.lists(SEGMENTS, max_size=5),
    st.sampled_from([b"", b"?", b"?a=1", b"?%ff=%zz", b"?" + b"q" * 100]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/x"]),
)


def test_fuzzed_requests_never_get_a_500(start_daemon, database) -> None:
    """
    Hundreds of generated requests over the legacy routes — any method,
    numbers of any size and sign, percent-encoded junk, empty and dotted
    segments, odd versions — all get an answer below 500 (errors as JSON),
    and the daemon logs no internal error and stops cleanly.
    """
    daemon = start_daemon("--db", database.dsn, "--longpoll-timeout", "0.02")
    daemon.wait_for("database ready")
    database.sql(
        "INSERT INTO readings SELECT 1, %s + i * 1000, 1000 + i FROM generate_series(0, 199) i",
        (T_FUZZ,),
    )
    ok = exchange(daemon.port, b"GET /last/1 HTTP/1.1\r\nHost: blip\r\nConnection: close\r\n\r\n")
    assert ok == (200, b"[%d,1199]" % (T_FUZZ + 199000))

    @settings(
        max_examples=400, deadline=None, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(request=REQUESTS)
    def probe(request: bytes) -> None:
        status, body = exchange(daemon.port, request)
        assert status is not None, request
        assert status < 500, (request, status, body)
        if status >= 400 and not request.startswith(b"HEAD"):
            # Legacy errors are {"error": ...}; /api/v1 ones problem details
            # that carry "error" too.
            assert "error" in json.loads(body), (request, body)

    probe()
    assert daemon.stop() == 0
    assert not [line for line in daemon.output if "Traceback" in line or "error answering" in line]


# --- Raw requests against the site as the daemon serves it ---

#: Path segments the routes know, and junk.
WORDS = st.sampled_from(
    ["blip", "last", "since", "range", "aggregate", "aggregate_hourly", "hourly", "minutely",
     "usage", "api", "v1", "meters", "power", "energy", "gaps", "readings", "live",
     "openapi.json", "healthz", "metrics", "index.html", "static", "1", "2", "0", "-1",
     str(T_FUZZ), "9" * 20, "", ".", "..", "%00", "%FF", "%zz", "%", "%2F", "%2e%2e", "%C0%AF",
     "a%00b", "%E2%80%AE", "１", "~", ";", "=", "%0d%0a", "\\", "*"]
)
#: Bytes that may appear anywhere in a request line but its separators.
JUNK = st.binary(max_size=12).map(lambda b: b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b""))
SEGMENT = st.one_of(
    WORDS.map(str.encode),
    JUNK,
    st.text(max_size=6).map(lambda t: quote(t).encode()),
    st.binary(min_size=1, max_size=4).map(lambda b: "".join(f"%{c:02X}" for c in b).encode()),
)
QUERY = st.lists(
    st.tuples(
        st.sampled_from([b"from", b"to", b"max_points", b"period", b"min_gap", b"format", b"meters",
                         b"discovery", b"", b"%00", b"from[]"]),
        st.one_of(st.sampled_from([b"", b"1", b"-1", b"2024-03-31", b"2024-03-31T02:00:00+02:00",
                                   b"day", b"csv", b"json", b"1,2", b"%00", b"%ff", b"9" * 30,
                                   b"NaN", b"1e400", b"2024-02-30", b"9999-12-31T23:59:59"]), JUNK),
    ),
    max_size=4,
).map(lambda pairs: b"&".join(k + b"=" + v for k, v in pairs))
PATH = st.lists(SEGMENT, max_size=6).map(lambda parts: b"/" + b"/".join(parts))
#: Targets the daemon answers, to be dressed with odd headers.
KNOWN = st.sampled_from(
    [b"/", b"/index.html", b"/app.js", b"/js/api.js", b"/favicon.svg", b"/last/1", b"/blip/1",
     b"/since/1/0", b"/range/1/0/" + str(T_FUZZ * 2).encode(), b"/hourly/1/0/" + str(T_FUZZ).encode(),
     b"/usage/1/1000", b"/api/v1/meters", b"/api/v1/meters/1", b"/api/v1/meters/1/power",
     b"/api/v1/meters/1/energy?period=month", b"/api/v1/meters/1/gaps",
     b"/api/v1/meters/1/readings?format=csv", b"/api/v1/live", b"/api/v1/openapi.json",
     b"/healthz", b"/metrics"]
)
TARGET = st.one_of(
    KNOWN,
    KNOWN,
    st.tuples(KNOWN, QUERY.map(lambda q: b"&" + q)).map(b"".join),
    st.tuples(PATH, st.one_of(st.just(b""), QUERY.map(lambda q: b"?" + q))).map(b"".join),
    PATH.map(lambda p: b"http://blip.test" + p),
    st.sampled_from([b"*", b"//", b"/?", b"/#x", b"http://", b"https://x?y", b"ftp://x/last/1"]),
    JUNK,
)
COMMON_METHODS = st.sampled_from([b"GET"] * 12 + [b"HEAD"] * 3 + [b"OPTIONS", b"POST", b"PUT", b"DELETE"])
METHOD = st.one_of(
    COMMON_METHODS, COMMON_METHODS, COMMON_METHODS,
    st.sampled_from([b"PATCH", b"TRACE", b"CONNECT", b"get", b"PRI", b"G\x00T"]),
    JUNK,
)
VERSION = st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.1x",
                                               b"http/1.1", b"HTTP/", b""])
ANY_VALUE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
ADDRESSES = st.sampled_from([b"192.0.2.7", b"203.0.113.9, 192.0.2.7", b"192.0.2.7, 203.0.113.9",
                             b"unknown", b"[::1]:80", b"::ffff:192.0.2.7", b"127.0.0.1", b", ,", b""])
#: Headers with values each may well have, and junk.
HEADER = st.one_of(
    st.tuples(st.just(b"Range"), st.sampled_from(
        [b"bytes=0-10", b"bytes=5-1", b"bytes=0-0,1-1", b"bytes=999999999-", b"bytes=-0",
         b"bytes=0-0,99999999-", b"bytes=", b"lines=1-2", b"bytes=-99999999999999999999"])),
    st.tuples(st.sampled_from([b"If-None-Match", b"If-Range"]),
              st.sampled_from([b"*", b'"x"', b'W/"x"', b"", b'"1a2-3"'])),
    st.tuples(st.just(b"If-Modified-Since"),
              st.sampled_from([b"Sat, 29 Oct 1994 19:43:31 GMT", b"yesterday", b"", b"0"])),
    st.tuples(st.just(b"X-Forwarded-For"), ADDRESSES),
    st.tuples(st.just(b"Forwarded"), ADDRESSES.map(lambda a: b"for=" + a)),
    st.tuples(st.just(b"Last-Event-ID"),
              st.sampled_from([b"0", b"-1", b"1e9", b"9" * 30, str(T_FUZZ).encode(), b""])),
    st.tuples(st.just(b"Accept"), st.sampled_from([b"text/event-stream", b"*/*", b"", b"\xff"])),
    st.tuples(st.just(b"Accept-Encoding"), st.sampled_from([b"gzip", b"gzip;q=0", b"br", b"*"])),
    st.tuples(st.sampled_from([b"Content-Length", b"Transfer-Encoding"]),
              st.sampled_from([b"0", b"1", b"5", b"-1", b"chunked", b"gzip", b"identity", b"9" * 30])),
    st.tuples(st.sampled_from([b"Host", b"Origin"]),
              st.sampled_from([b"blip", b"blip:80", b"[::1]:8080", b"http://evil.example", b"null",
                               b"\x80", b"a..b", b"x" * 300, b""])),
    st.tuples(st.sampled_from([b"Expect", b"Connection", b"Upgrade", b"Cookie", b"Authorization"]),
              st.sampled_from([b"100-continue", b"keep-alive", b"Upgrade", b"websocket", b"a=b; c"])),
    st.tuples(st.one_of(JUNK, st.sampled_from([b"Host", b"Range", b"Accept"])), ANY_VALUE),
)
FORMED = st.builds(
    lambda method, target, version, headers, body: (
        method + b" " + target + (b" " + version if version else b"") + b"\r\n"
        + b"Connection: close\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        + b"\r\n" + body
    ),
    METHOD, TARGET, VERSION, st.lists(HEADER, max_size=6),
    st.sampled_from([b"", b"", b"", b"5\r\nhello\r\n0\r\n\r\n", b"xyz"]),
)
RAW_REQUESTS = st.one_of(
    FORMED, FORMED, FORMED, FORMED,
    # Anything at all, then a blank line.
    st.binary(max_size=80).map(lambda b: b + b"\r\n\r\n"),
)


@pytest_twisted.ensureDeferred
async def test_raw_fuzzed_requests_never_get_a_500_nor_a_traceback(
    serve: Callable[..., Served], log_events: EventLoggingObserver
) -> None:
    """
    A thousand generated raw requests — request lines of any method,
    target and version, junk paths and query strings, odd and forged
    headers, bodies, bytes that are not HTTP at all — against the site as
    the daemon serves it (access control, metrics, every application) on
    a real port: none is answered 500, every error answer is JSON, and
    nothing is logged as a failure. The examples are derandomized, so a
    run is reproducible.
    """
    site = serve(Meters(), rules=Rules(
        allow=(ip_network("127.0.0.0/8"), ip_network("192.0.2.0/24")),
        proxies=(ip_network("127.0.0.1/32"),),
    ))
    await site.store.insert([Point(1, T_FUZZ + i * 1000, 1000 + i) for i in range(50)])
    # Parked long-polls are answered soon after they park.
    stamps = iter(range(T_FUZZ + 10**6, T_FUZZ + 10**9))
    blinking = LoopingCall(lambda: [site.hub.publish(Point(m, next(stamps), 1000)) for m in (1, 2)])
    blinking.start(0.01)

    @settings(
        max_examples=1000, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=RAW_REQUESTS)
    def probe(request: bytes) -> None:
        try:
            status, headers, body = fetch(site.port, request)
        except TimeoutError:
            raise AssertionError(("no answer", request)) from None
        assert status is not None, request
        assert status != 500, (request, body)
        if status >= 400:
            kind = headers.get(b"content-type", b"").split(b";")[0]
            assert kind in (b"application/json", b"application/problem+json"), (request, status, headers)
            if body and not request.startswith(b"HEAD "):
                assert "error" in json.loads(body), (request, body)

    try:
        await deferToThread(probe)
    finally:
        blinking.stop()
    failures = [
        e for e in log_events
        if "log_failure" in e or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]
    assert failures == [], [formatEvent(e) for e in failures]


@pytest.mark.parametrize(
    "description, expected",
    [
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=4096"),
        ("unix:/run/blip.sock", "unix:/run/blip.sock:backlog=4096"),
        ("ssl:443:privateKey=a\\:b.pem", "ssl:443:privateKey=a\\:b.pem:backlog=4096"),
        ("tcp:8080:backlog=10", "tcp:8080:backlog=10"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_a_listen_endpoint_gets_a_deep_backlog(description: str, expected: str) -> None:
    """
    An endpoint that takes a listen backlog and names none gets one of
    :data:`BACKLOG`; one that names its own, or takes none (a socket
    systemd listens on), is left as it is.
    """
    assert with_backlog(description) == expected


def connect_many(port: int, count: int, within: float) -> int:
    """
    Open ``count`` connections to ``port`` at once (blocking: run it in a
    thread).

    :return: how many of them the kernel established within ``within``
        seconds (one whose handshake found the listen backlog full is
        retried a second later).
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sockets.append(s)
        waiting, deadline = set(sockets), time.monotonic() + within
        while waiting and time.monotonic() < deadline:
            _, ready, _ = select.select([], list(waiting), [], max(0.0, deadline - time.monotonic()))
            waiting -= set(ready)
        return count - len(waiting)
    finally:
        for s in sockets:
            s.close()


@pytest_twisted.ensureDeferred
async def test_connections_wait_in_a_deep_backlog() -> None:
    """
    The backlog reaches the kernel: while nothing is accepted, 300
    clients connecting at once all get their connection at once, where
    Twisted's backlog of 50 would have most of them retry a second later.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory, Protocol

    port = await serverFromString(reactor, with_backlog("tcp:0:interface=127.0.0.1")).listen(
        Factory.forProtocol(Protocol)
    )
    port.stopReading()
    try:
        assert await deferToThread(connect_many, port.getHost().port, 300, 0.9) == 300
    finally:
        port.startReading()
        await port.stopListening()
