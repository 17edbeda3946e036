"""
Tests of the legacy HTTP API over a real port, against a real database:
byte-exact JSON for every route, headers, long-polls and every error.
"""

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from blip.db.store import Store
from blip.live.hub import Hub
from blip.meters import Meter, Meters
from blip.model import Point
from blip.service import STATIC
from blip.web.front import root
from blip.web.legacy import LegacyApi
from blip.web.site import QuietSite
from tests.conftest import ROOT, wait_until

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
NOW = (T0 + 2 * HOUR) / 1000


@dataclass
class Api:
    """The API under test and what it is made of."""

    url: str
    hub: Hub
    clock: Clock
    store: Store
    port: Any

    async def get(self, path: str, method: str = "GET") -> tuple[int, Any, bytes]:
        """:return: status, headers and body of one request."""
        from twisted.internet import reactor

        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = await agent.request(method.encode(), (self.url + path).encode())
        headers = response.headers.copy()
        if isinstance(response.length, int):
            # Twisted's client moves Content-Length out of the headers.
            headers.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        return response.code, headers, await readBody(response)


@pytest_twisted.async_yield_fixture
async def api(store: Store) -> AsyncIterator[Api]:
    """
    The legacy API on a real port: meter 1 has 10 points a second apart
    from T0, meter 2 one point; meter 3 is configured but has no readings.
    """
    from twisted.internet import reactor

    await store.insert([Point(1, T0 + i * 1000, 1000 + i) for i in range(10)] + [Point(2, T0, 42)])
    clock = Clock()
    clock.advance(NOW)
    hub = Hub(max_waiters=3)
    meters = Meters([Meter(1), Meter(3)])
    app = LegacyApi(store, hub, meters, clock, 5.0, STATIC)
    port = reactor.listenTCP(0, QuietSite(root(app, reactor)), interface="127.0.0.1")
    try:
        yield Api(f"http://127.0.0.1:{port.getHost().port}", hub, clock, store, port)
    finally:
        hub.close()
        await port.stopListening()


def pairs(rows: list[tuple[int, int]]) -> bytes:
    """The original's encoding of a list of pairs, written out by hand."""
    return ("[" + ",".join(f"[{a},{b}]" for a, b in rows) + "]").encode()


METER1 = [(T0 + i * 1000, 1000 + i) for i in range(10)]

EXACT = [
    ("/last", pairs([METER1[-1]])[1:-1]),
    ("/last/1", pairs([METER1[-1]])[1:-1]),
    ("/last/2", f"[{T0},42]".encode()),
    ("/since/" + str(T0 + 7000), pairs(METER1[7:])),
    ("/since/1/" + str(T0 + 7000), pairs(METER1[7:])),
    ("/since/2/" + str(T0 + 1), b"[]"),
    ("/range/" + f"{T0 + 2000}/{T0 + 4000}", pairs(METER1[2:5])),
    ("/range/1/" + f"{T0 + 2000}/{T0 + 4000}", pairs(METER1[2:5])),
    ("/range/1/" + f"{T0}/{T0}", pairs(METER1[:1])),
    ("/aggregate/" + f"{T0 + 500}/3000/2", b"[[0,3],[3000,3]]"),
    ("/aggregate/1/" + f"{T0 - 2000}/4000/3", b"[[0,2],[4000,4],[8000,4]]"),
    ("/aggregate/1/" + f"{T0 - 100000}/1000/10", b"[]"),
    ("/aggregate/1/" + f"{T0}/1/0", b"[]"),
    ("/hourly/" + f"{T0}/{T0 + HOUR}", f"[[{T0},10,{3600000 * 10 / sum(range(1000, 1010))!r},1000,1009]]".encode()),
    ("/hourly/2/" + f"{T0}/{T0}", f"[[{T0},1,{3600000 / 42!r},42,42]]".encode()),
    ("/minutely/1/" + f"{T0}/{T0}", f"[[{T0},10,{3600000 * 10 / sum(range(1000, 1010))!r},1000,1009]]".encode()),
    ("/aggregate_hourly/2/" + f"{T0}/{2 * HOUR}/2", f"[[0,{3600000 / 42!r}]]".encode()),
    ("/usage/1/" + str(int(NOW * 1000) - T0 - 5000), b"[5]"),
    ("/usage/7/1000", b"[0]"),
    ("/last/1/" + str(int(NOW * 1000) - T0 - 8000), pairs(METER1[8:])),
]


@pytest.mark.parametrize("path, body", EXACT)
@pytest_twisted.ensureDeferred
async def test_routes_answer_byte_for_byte(api: Api, path: str, body: bytes) -> None:
    """
    Every legacy route, with and without a meter id, answers the original's
    bytes for the same points.
    """
    code, headers, content = await api.get(path)
    assert (code, content) == (200, body)
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert headers.getRawHeaders(b"Content-Length") == [str(len(body)).encode()]


@pytest_twisted.ensureDeferred
async def test_whole_numbers_print_as_postgresql_does(api: Api) -> None:
    """
    A power that is a whole number prints without ``.0``, as PostgreSQL
    (and so the original) prints it.
    """
    await api.store.insert([Point(4, T0 + HOUR, 1000), Point(4, T0 + HOUR + 1000, 1000)])
    code, _, content = await api.get(f"/hourly/4/{T0}/{T0 + HOUR}")
    assert content == f"[[{T0 + HOUR},2,3600,1000,1000]]".encode()


@pytest_twisted.ensureDeferred
async def test_caps(api: Api) -> None:
    """
    /since answers at most 2000 points, oldest first.
    """
    await api.store.insert([Point(5, T0 + i, 1) for i in range(2100)])
    code, _, content = await api.get(f"/since/5/{T0}")
    rows = content[2:-2].split(b"],[")
    assert len(rows) == 2000
    assert rows[0] == f"{T0},1".encode()


@pytest.mark.parametrize(
    "path",
    ["/last", "/last/1", "/last/1/100", "/since/1", "/since/1/1", "/range/1/2", "/range/1/1/2",
     "/aggregate/1/2/3", "/aggregate/1/1/2/3", "/aggregate_hourly/1/2/3", "/aggregate_hourly/1/1/2/3",
     "/hourly/1/2", "/hourly/1/1/2", "/minutely/1/2", "/minutely/1/1/2", "/usage/5", "/usage/1/5",
     "/blip", "/blip/1"],
)
@pytest_twisted.ensureDeferred
async def test_headers_and_options(api: Api, path: str) -> None:
    """
    Every API route answers OPTIONS with the CORS headers, and carries them
    and the cache headers on GET too.
    """
    code, headers, content = await api.get(path, "OPTIONS")
    assert (code, content) == (200, b"")
    assert headers.getRawHeaders(b"Content-Length") == [b"0"]
    assert not headers.hasHeader(b"Content-Type") and not headers.hasHeader(b"Transfer-Encoding")
    expected = {
        b"Access-Control-Allow-Origin": [b"*"],
        b"Access-Control-Allow-Methods": [b"GET"],
        b"Access-Control-Allow-Headers": [b"origin, x-requested-with, accept"],
        b"Access-Control-Max-Age": [b"60"],
        b"Cache-Control": [b"max-age=0, must-revalidate"],
    }
    for name, value in expected.items():
        assert headers.getRawHeaders(name) == value
    if not path.startswith("/blip"):
        code, headers, _ = await api.get(path)
        for name, value in expected.items():
            assert headers.getRawHeaders(name) == value


@pytest.mark.parametrize(
    "path, status",
    [
        ("/since/1/1234567890123456", 400),
        ("/since/1234567890123456", 400),
        ("/last/1/1234567890123456", 400),
        ("/aggregate/1/1/1/1001", 400),
        ("/aggregate_hourly/1/1/1/1001", 400),
        ("/aggregate/1/1/0/10", 400),
        ("/since/1/abc", 400),
        ("/since/1/-5", 400),
        ("/since/x/5", 400),
        ("/since/1/%C2%B2", 400),
        ("/range/1/5/4", 400),
        ("/hourly/1/5/4", 400),
        ("/minutely/1/5/4", 400),
        ("/last/3", 404),
        ("/last/99999999999", 404),
        ("/blip/7", 404),
        ("/blip/99999999999", 404),
        ("/nothing/here", 404),
        ("/since/1/2/3/4", 404),
        ("/last/", 404),
        ("/%FF", 400),
        ("/since/" + "9" * 9000, 414),
        ("/since/" + "9" * 15000, 414),
        ("/since/1/%00", 400),
        ("/since/1/%31%32", 200),
        ("/range/1/%2F/5", 404),
        ("/last/%2e%2e", 400),
        ("/hourly/1/%E2%80%AE/1", 400),
        ("/last/1/9999999999999999999999", 400),
        ("/aggregate/1/1/999999999999999/1000", 200),
    ],
)
@pytest_twisted.ensureDeferred
async def test_errors_are_json(api: Api, path: str, status: int) -> None:
    """
    Bad numbers, caps, reversed ranges, unknown meters, unknown routes,
    percent-encoded junk and long targets answer their status with a JSON
    body saying what is wrong (percent-encoded digits are digits).
    """
    code, headers, content = await api.get(path)
    assert code == status
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    if status != 200:
        assert set(json.loads(content)) == {"error"}


@pytest_twisted.ensureDeferred
async def test_unsupported_method_is_405_json(api: Api) -> None:
    """
    A POST to an API route is 405 with a JSON body.
    """
    code, _, content = await api.get("/last/1", "POST")
    assert code == 405
    assert content == b'{"error":"method not allowed"}'


@pytest_twisted.ensureDeferred
async def test_long_poll_gets_the_next_point(api: Api) -> None:
    """
    /blip/<id> answers with the meter's next point, as soon as it is
    published; the id-less form follows the default meter.
    """
    with_id = Deferred.fromCoroutine(api.get("/blip/1"))
    without = Deferred.fromCoroutine(api.get("/blip"))
    await wait_until(lambda: api.hub.waiting == 2)
    api.hub.publish(Point(2, T0 + 99, 5))
    api.hub.publish(Point(1, T0 + 100_000, 1234))
    for pending in (with_id, without):
        code, _, content = await pending
        assert (code, content) == (200, f"[{T0 + 100_000},1234]".encode())
    assert api.hub.waiting == 0


@pytest_twisted.ensureDeferred
async def test_long_poll_times_out_with_204(api: Api) -> None:
    """
    With --longpoll-timeout, a long-poll that saw no point answers 204 and
    leaves no waiter.
    """
    pending = Deferred.fromCoroutine(api.get("/blip/3"))
    await wait_until(lambda: api.hub.waiting == 1)
    api.clock.advance(5.0)
    code, _, content = await pending
    assert (code, content) == (204, b"")
    assert api.hub.waiting == 0


@pytest_twisted.ensureDeferred
async def test_too_many_waiters_is_503(api: Api) -> None:
    """
    Past the cap on parked long-polls, new ones get 503 JSON.
    """
    parked = [Deferred.fromCoroutine(api.get("/blip/1")) for _ in range(3)]
    await wait_until(lambda: api.hub.waiting == 3)
    code, _, content = await api.get("/blip/1")
    assert code == 503
    assert b"error" in content
    api.hub.publish(Point(1, T0 + 500_000, 1))
    for pending in parked:
        assert (await pending)[0] == 200


@pytest_twisted.ensureDeferred
async def test_client_hanging_up_leaves_no_waiter(api: Api) -> None:
    """
    A client that closes its connection mid long-poll is removed at once.
    """
    from twisted.internet import reactor

    host, port = api.url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(3):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET /blip/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        sockets.append(s)
    await wait_until(lambda: api.hub.waiting == 3)
    for s in sockets[:2]:
        s.close()
    await wait_until(lambda: api.hub.waiting == 1)
    sockets[2].close()
    await wait_until(lambda: api.hub.waiting == 0)
    del reactor


@pytest_twisted.ensureDeferred
async def test_last_prefers_the_live_point(api: Api) -> None:
    """
    /last answers the newest point the hub has seen, before the database
    has it.
    """
    api.hub.publish(Point(1, T0 + 777_000, 321))
    assert (await api.get("/last/1"))[2] == f"[{T0 + 777_000},321]".encode()


@pytest_twisted.ensureDeferred
async def test_static_page(api: Api) -> None:
    """
    The page is served at /, without directory listings or escapes from its
    folder.
    """
    code, headers, content = await api.get("/")
    assert code == 200
    assert headers.getRawHeaders(b"Content-Type")[0].startswith(b"text/html")
    assert content == (STATIC / "index.html").read_bytes()
    assert (await api.get("/../setup.cfg"))[0] == 404
    assert (await api.get("/%2e%2e/setup.cfg"))[0] == 404


def test_static_folder_is_the_repositorys() -> None:
    """
    The page's folder resolves to the static/ folder at the top.
    """
    assert STATIC.resolve() == (ROOT / "static").resolve()


def exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[Optional[int], bytes]:
    """
    Send raw bytes to the server and read until it closes the connection.

    :return: the status code (None if there was no status line) and the
        body.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None, answer
    return int(parts[1]), body


def api_port(api: Api) -> int:
    """:return: the port the API listens on."""
    return int(api.url.rsplit(":", 1)[1])


@pytest_twisted.ensureDeferred
async def test_absolute_form_targets_are_served(api: Api) -> None:
    """
    A request line with an absolute-form target (as a client talking to a
    proxy sends it) is answered like its path: the route, the page, and a
    404 for an unknown path; other schemes are not paths.
    """
    await api.store.insert([Point(1, 1_700_000_000_000, 1000)])
    for target, status, body in [
        (b"http://blip.example/last/1", 200, b"[1700000000000,1000]"),
        (b"HTTP://blip.example:8080/last?x=1", 200, b"[1700000000000,1000]"),
        (b"https://blip.example/nowhere", 404, b'{"error":"no such route"}'),
        (b"ftp://blip.example/last/1", 404, None),
    ]:
        request = b"GET " + target + b" HTTP/1.1\r\nHost: blip.example\r\nConnection: close\r\n\r\n"
        code, answer = await deferToThread(exchange, api_port(api), request)
        assert code == status, target
        if body is not None:
            assert answer == body, target


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /since/" + b"9" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /" + b"a" * 300_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /last/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n", 431),
        (b"GET /last/1 HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET /last/1 HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n", 400),
        (b"BREW /last/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
        (b"DELETE /since/1/5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refusals_before_routing_are_json(api: Api, request_bytes: bytes, status: int) -> None:
    """
    What Twisted refuses before a request reaches the app — a request line
    of any length over its limit, a huge header, a malformed request — and
    unknown methods get a JSON error with a meaningful status, which the
    client can read (no connection reset).
    """
    code, body = await deferToThread(exchange, api_port(api), request_bytes)
    assert code == status
    assert set(json.loads(body)) == {"error"}


@pytest_twisted.ensureDeferred
async def test_clients_that_never_read_do_not_hold_up_others(api: Api) -> None:
    """
    A client that pipelines requests for large answers and never reads
    them, and clients whose long-polls are answered but never read, do not
    stop other clients from being answered.
    """
    await api.store.insert([Point(5, T0 + i, 1) for i in range(2000)])
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", api_port(api)))
    hog.setblocking(False)
    pipelined = b"GET /since/5/0 HTTP/1.1\r\nHost: x\r\n\r\n" * 500
    try:
        hog.send(pipelined)
    except BlockingIOError:
        pass
    sleepers = []
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", api_port(api)))
        s.sendall(b"GET /blip/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        sleepers.append(s)
    try:
        await wait_until(lambda: api.hub.waiting == 2)
        api.hub.publish(Point(1, T0 + 900_000, 5))
        for _ in range(20):
            code, _, content = await api.get("/last/1")
            assert (code, content) == (200, f"[{T0 + 900_000},5]".encode())
        code, _, content = await api.get("/since/5/0")
        assert code == 200 and content.count(b"],[") == 1999
    finally:
        hog.close()
        for s in sleepers:
            s.close()


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


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """:return: the head and body of one HTTP response read from ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        body += s.recv(65536)
    return head, body


@pytest_twisted.ensureDeferred
async def test_long_polls_on_one_keep_alive_connection(api: Api) -> None:
    """
    A client on a persistent HTTP/1.1 connection parks, gets a point, and
    parks again on the same connection for the next one; the answers carry
    the same headers as every legacy answer.
    """
    from twisted.internet.threads import deferToThread

    host, port = api.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        for n in range(3):
            s.sendall(b"GET /blip/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_until(lambda: api.hub.waiting == 1)
            reading = deferToThread(read_response, s)
            api.hub.publish(Point(1, T0 + 900_000 + n, 100 + n))
            head, body = await reading
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert body == f"[{T0 + 900_000 + n},{100 + n}]".encode()
            for header in (b"Access-Control-Allow-Origin: *", b"Content-Type: application/json",
                           b"Cache-Control: max-age=0, must-revalidate", b"Date: "):
                assert header in head
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_long_poll_over_http_1_0_and_head(api: Api) -> None:
    """
    An HTTP/1.0 client gets its point and the connection closes; a HEAD
    long-poll gets the headers alone.
    """
    from twisted.internet.threads import deferToThread

    host, port = api.url.removeprefix("http://").split(":")

    def exchange(request: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    old = deferToThread(exchange, b"GET /blip/1 HTTP/1.0\r\n\r\n")
    head = deferToThread(exchange, b"HEAD /blip/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await wait_until(lambda: api.hub.waiting == 2)
    api.hub.publish(Point(1, T0 + 950_000, 77))
    answer = await old
    assert answer.startswith(b"HTTP/1.0 200 OK")
    assert answer.endswith(f"\r\n\r\n[{T0 + 950_000},77]".encode())
    answer = await head
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: " in answer and answer.endswith(b"\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_a_database_without_the_schema_is_503(database) -> None:
    """
    Before the schema exists (a web node on a database no node has
    prepared yet), the routes that read the database answer 503 JSON,
    not 500.
    """
    from twisted.internet import reactor

    from blip.db.pool import Pool

    pool = Pool(database.dsn, 1, reactor)
    await pool.start()
    try:
        app = LegacyApi(Store(pool), Hub(), Meters(), Clock(), 0, STATIC)
        port = reactor.listenTCP(0, QuietSite(root(app, reactor)), interface="127.0.0.1")
        try:
            api = Api(f"http://127.0.0.1:{port.getHost().port}", app.hub, app.clock, app.store, port)
            for path in ("/since/1/0", "/last/1", "/hourly/1/0/5"):
                code, _, content = await api.get(path)
                assert code == 503, path
                assert b"not prepared" in content
        finally:
            await port.stopListening()
    finally:
        pool.close()
