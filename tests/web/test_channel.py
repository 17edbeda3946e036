"""
Tests of the HTTP connection over a real port: what it refuses before a
request reaches the site answers JSON that the client can read, and
request targets in absolute form are served like their path.
"""

import json
import select
import socket
import time
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import tcp
from twisted.internet.threads import deferToThread
from twisted.web.test.requesthelper import DummyChannel

from blip.meters import Meters
from blip.model import Point
from blip.web.channel import TargetRequest
from tests.conftest import TIMEOUT, Served, exchange, fetch


@pytest.mark.parametrize(
    "target, path",
    [
        (b"http://blip.example/last/1", b"/last/1"),
        (b"HTTP://blip.example:8080/last?x=1", b"/last?x=1"),
        (b"https://blip.example", b"/"),
        (b"http://blip.example?q", b"/?q"),
        (b"ftp://blip.example/last/1", b"ftp://blip.example/last/1"),
        (b"*", b"*"),
    ],
)
def test_absolute_form_targets(target: bytes, path: bytes) -> None:
    """
    An http or https target in absolute form stands for its path and
    query; anything else is left as it came.
    """
    assert TargetRequest(DummyChannel()).target(target) == path


@pytest_twisted.ensureDeferred
async def test_absolute_form_targets_are_served(serve: Callable[..., Served]) -> None:
    """
    A request line with an absolute-form target (as a client talking to a
    proxy sends it) is answered like its path: the route, the page, and a
    404 for an unknown path; other schemes are not paths.
    """
    site = serve(Meters())
    await site.store.insert([Point(1, 1_700_000_000_000, 1000)])
    for target, status, body in [
        (b"http://blip.example/last/1", 200, b"[1700000000000,1000]"),
        (b"HTTP://blip.example:8080/last?x=1", 200, b"[1700000000000,1000]"),
        (b"https://blip.example/nowhere", 404, b'{"error":"no such route"}'),
        (b"ftp://blip.example/last/1", 404, None),
    ]:
        request = b"GET " + target + b" HTTP/1.1\r\nHost: blip.example\r\nConnection: close\r\n\r\n"
        code, answer = await deferToThread(exchange, site.port, request)
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
async def test_refusals_before_routing_are_json(
    serve: Callable[..., Served], request_bytes: bytes, status: int
) -> None:
    """
    What Twisted refuses before a request reaches the app — a request line
    of any length over its limit, a huge header, a malformed request — and
    unknown methods get a JSON error with a meaningful status, which the
    client can read (no connection reset).
    """
    site = serve(Meters())
    code, body = await deferToThread(exchange, site.port, request_bytes)
    assert code == status
    assert set(json.loads(body)) == {"error"}


@pytest_twisted.ensureDeferred
async def test_a_long_request_line_after_an_answer_is_414(serve: Callable[..., Served]) -> None:
    """
    On a keep-alive connection, a request line over the limit after a
    request already answered is a request line too (414, not 431).
    """
    site = serve(Meters())
    await site.store.insert([Point(1, 1_700_000_000_000, 1000)])
    request = b"GET /last/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"
    code, rest = await deferToThread(exchange, site.port, request)
    assert code == 200
    assert rest.startswith(b"[1700000000000,1000]HTTP/1.1 414 ")
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == {"error": "request target longer than 8192 bytes"}


def count_reads(site: Served) -> list[int]:
    """
    :return: a list that gets the length of every piece of data the
        site's connections read from now on (whichever protocol takes it).
    """
    read: list[int] = []

    class Counting(tcp.Server):
        # What the connection read, before its protocol gets it.
        def _dataReceived(self, data: bytes) -> Any:
            read.append(len(data))
            return super()._dataReceived(data)

    site.listening.transport = Counting
    return read


def stream_body(port: int, head: bytes, total: int = 5 << 20, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """
    Send ``head`` and then up to ``total`` bytes of chunked body, 16 KiB
    at a time, until the server closes the connection (blocking: run it
    in a thread).

    :return: how much of the body was sent, and what was answered.
    """
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)) as s:
        try:
            s.sendall(head)
            while sent < total:
                s.sendall(chunk)
                sent += len(chunk)
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        answer = b""
        try:
            while data := s.recv(65536):
                answer += data
        except OSError:
            pass
    return sent, answer


#: The media types of a legacy error and of a problem document (/api/v1).
LEGACY, PROBLEM = b"application/json", b"application/problem+json"


@pytest.mark.parametrize(
    "head, status, media",
    [
        (b"GET /last/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 413, LEGACY),
        (b"HEAD /last/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 413, LEGACY),
        (b"OPTIONS /last/1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n", 413, LEGACY),
        (b"POST /last/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 405, LEGACY),
        (b"GET /last/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5242880\r\n\r\n", 413, LEGACY),
        (b"GET /last/1 HTTP/1.0\r\nContent-Length: 1\r\n\r\n", 413, LEGACY),
        (b"GET /api/v1/meters/1/readings HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", 413, PROBLEM),
        (b"PUT /api/v1/meters/1/readings HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", 405, PROBLEM),
        (b"POST http://x/api/v1/meters/1/power HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", 405, PROBLEM),
        (b"POST /api/v1/meters/1/readings?x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
         b"Content-Length: 5242880\r\n\r\n", 413, PROBLEM),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_body_is_refused_before_it_is_read(
    serve: Callable[..., Served], head: bytes, status: int, media: bytes
) -> None:
    """
    Only the write API takes a body, of at most 1 MiB: a request announcing
    one elsewhere (chunks, or a Content-Length over 0), or a longer one, is
    answered at once in JSON (a problem document under /api/v1) — 413 for
    GET, HEAD and OPTIONS and for a body too large, 405 for other methods,
    with the methods allowed — without a 100 Continue, and its connection
    closed, before the body is read: of a 5 MiB body, the server reads 64
    KiB at most (what its first read of the connection takes).
    """
    site = serve(Meters())
    read = count_reads(site)
    sent, answer = await deferToThread(stream_body, site.port, head)
    assert sum(read) <= 64 * 1024, (sum(read), sent)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"100 Continue" not in answer
    head_of_answer, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: " + media + b"\r\n" in head_of_answer
    assert "error" in json.loads(body)
    if status == 405:
        methods = b"GET, HEAD, OPTIONS, POST" if b"/readings" in head else b"GET, HEAD, OPTIONS"
        assert b"Allow: " + methods + b"\r\n" in head_of_answer


@pytest_twisted.ensureDeferred
async def test_an_empty_body_is_no_body(serve: Callable[..., Served]) -> None:
    """
    A Content-Length of 0 announces no body: the request is served.
    """
    site = serve(Meters())
    await site.store.insert([Point(1, 1_700_000_000_000, 1000)])
    request = b"GET /last/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert await deferToThread(exchange, site.port, request) == (200, b"[1700000000000,1000]")


@pytest.mark.parametrize(
    "headers",
    [
        b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(101)),
        b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(40)),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_head_over_its_caps_is_431(serve: Callable[..., Served], headers: bytes) -> None:
    """
    More than 100 headers, or a request line and headers over 32 KiB (each
    line under the line limit), are refused with a JSON 431.
    """
    site = serve(Meters())
    request = b"GET /last/1 HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    code, body = await deferToThread(exchange, site.port, request)
    assert (code, json.loads(body)) == (431, {"error": "request header fields too large"})


@pytest.mark.parametrize("method, status", [(b"GET", 405), (b"HEAD", 405), (b"OPTIONS", 200)])
@pytest_twisted.ensureDeferred
async def test_the_asterisk_form_is_for_options(
    serve: Callable[..., Served], method: bytes, status: int
) -> None:
    """
    ``OPTIONS *`` asks about the server: 200; any other method on ``*``
    is a JSON 405 allowing OPTIONS.
    """
    site = serve(Meters())
    request = method + b" * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await deferToThread(fetch, site.port, request)
    assert answer[0] == status
    if status == 405:
        assert answer[1][b"allow"] == b"OPTIONS"
        assert answer[1][b"content-type"] == b"application/json"
        if method == b"GET":
            assert json.loads(answer[2]) == {"error": "only OPTIONS applies to *"}


def trickle(port: int, seconds: float) -> float:
    """
    Send a request's head a byte every 0.1 s, for at most ``seconds``,
    until the server closes the connection (blocking).

    :return: how long the server kept it open.
    """
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        head = b"GET /last/1 HTTP/1.1\r\nX-Slow: " + b"x" * 1000
        for byte in head:
            if select.select([s], [], [], 0.1)[0] or time.monotonic() - started > seconds:
                break
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
    return time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_a_head_sent_a_byte_at_a_time_has_a_deadline(serve: Callable[..., Served]) -> None:
    """
    The idle timeout is a deadline for a request's head: a client sending
    it a byte now and then is cut when it passes, not kept for ever.
    """
    site = serve(Meters())
    site.listening.factory.timeOut = 0.5
    assert await deferToThread(trickle, site.port, 10.0) < 3.0
