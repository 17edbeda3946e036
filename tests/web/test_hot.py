"""
Tests of the hot routes, ``/blip`` long-polls and ``/last``, through the
daemon's own site: in memory with a fake clock for their logic, over real
ports for what only a connection shows (hang-ups, keep-alive, HTTP/1.0,
clients that never read).
"""

import socket
from typing import Callable
from unittest.mock import ANY

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from blip.meters import Meter, Meters
from blip.model import Point
from tests.conftest import Served, read_response, wait_until

T0 = 1_700_000_000_000
#: Meter 1 and 3 are configured; 2 is not.
METERS = Meters([Meter(1), Meter(3)])


def hot_site(serve: Callable[..., Served], memory: bool = True) -> Served:
    """
    The site with meters 1 and 3 configured, a 5 s long-poll timeout and
    room for 3 parked long-polls.
    """
    return serve(METERS, longpoll_timeout=5.0, max_waiters=3, memory=memory)


@pytest_twisted.ensureDeferred
async def test_long_poll_gets_the_next_point(serve: Callable[..., Served]) -> None:
    """
    /blip/<id> answers with the meter's next point, as soon as it is
    published; the id-less form follows the default meter.
    """
    site = hot_site(serve)
    with_id = Deferred.fromCoroutine(site.get("/blip/1"))
    without = Deferred.fromCoroutine(site.get("/blip"))
    await wait_until(lambda: site.hub.waiting == 2)
    site.hub.publish(Point(2, T0 + 99, 5))
    site.hub.publish(Point(1, T0 + 100_000, 1234))
    for pending in (with_id, without):
        code, headers, content = await pending
        assert (code, content) == (200, f"[{T0 + 100_000},1234]".encode())
        assert headers.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
    assert site.hub.waiting == 0


@pytest_twisted.ensureDeferred
async def test_long_poll_times_out_with_204(serve: Callable[..., Served]) -> None:
    """
    With --longpoll-timeout, a long-poll that saw no point answers 204 and
    leaves no waiter.
    """
    site = hot_site(serve)
    pending = Deferred.fromCoroutine(site.get("/blip/3"))
    await wait_until(lambda: site.hub.waiting == 1)
    site.clock.advance(4.9)
    assert not pending.called
    site.clock.advance(0.1)
    code, _, content = await pending
    assert (code, content) == (204, b"")
    assert site.hub.waiting == 0


@pytest_twisted.ensureDeferred
async def test_unknown_meters_and_too_many_waiters(serve: Callable[..., Served]) -> None:
    """
    A long-poll on a meter neither configured nor seen is 404; past the cap
    on parked long-polls, new ones get 503 JSON; both with the CORS
    headers; the parked ones are answered all the same.
    """
    site = hot_site(serve)
    code, headers, content = await site.get("/blip/7")
    assert (code, content) == (404, b'{"error":"unknown meter 7"}')
    assert headers.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
    parked = [Deferred.fromCoroutine(site.get("/blip/1")) for _ in range(3)]
    await wait_until(lambda: site.hub.waiting == 3)
    code, headers, content = await site.get("/blip/1")
    assert (code, content) == (503, b'{"error":"too many long-poll clients; try again later"}')
    assert headers.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
    site.hub.publish(Point(1, T0 + 500_000, 1))
    for pending in parked:
        assert (await pending)[0] == 200


@pytest_twisted.ensureDeferred
async def test_stopping_answers_parked_long_polls_503(serve: Callable[..., Served]) -> None:
    """
    Long-polls parked when the daemon stops are answered 503, JSON.
    """
    site = hot_site(serve)
    pending = Deferred.fromCoroutine(site.get("/blip/1"))
    await wait_until(lambda: site.hub.waiting == 1)
    site.hub.close()
    code, _, content = await pending
    assert (code, content) == (503, b'{"error":"shutting down"}')


@pytest_twisted.ensureDeferred
async def test_last_prefers_the_live_point(serve: Callable[..., Served]) -> None:
    """
    /last answers the newest point the hub has seen, before the database
    has it; without one in memory, the database's; 404 when neither has
    one.
    """
    site = hot_site(serve)
    await site.store.insert([Point(1, T0, 1000)])
    code, _, content = await site.get("/last/1")
    assert (code, content) == (200, f"[{T0},1000]".encode())
    site.hub.publish(Point(1, T0 + 777_000, 321))
    assert (await site.get("/last/1"))[2] == f"[{T0 + 777_000},321]".encode()
    assert (await site.get("/last"))[2] == f"[{T0 + 777_000},321]".encode()
    code, _, content = await site.get("/last/3")
    assert (code, content) == (404, b'{"error":"no readings for meter 3"}')


@pytest_twisted.ensureDeferred
async def test_last_of_a_number_no_meter_has(serve: Callable[..., Served]) -> None:
    """
    /last/<n> names a meter when one is configured, seen by the hub or has
    readings in the database; any other number is the single-meter
    original's /last/<ms>: the default meter's points of the last n ms.
    """
    site = hot_site(serve)
    now = int(site.clock.seconds() * 1000)
    await site.store.insert([
        Point(1, now - 1_500_000, 10), Point(1, now - 1_100_000, 11), Point(1, now - 1000, 12),
        Point(4, now - 5, 99),
    ])
    code, _, content = await site.get("/last/1200000")
    assert (code, content) == (200, f"[[{now - 1_100_000},11],[{now - 1000},12]]".encode())
    assert (await site.get("/last/999999999999999"))[2].startswith(f"[[{now - 1_500_000},10],".encode())
    assert await site.get("/last/3") == (404, ANY, b'{"error":"no readings for meter 3"}')
    assert (await site.get("/last/4"))[::2] == (200, f"[{now - 5},99]".encode())
    assert (await site.get("/last/2"))[::2] == (200, b"[]")
    site.hub.publish(Point(2, now, 7))
    assert (await site.get("/last/2"))[::2] == (200, f"[{now},7]".encode())


@pytest_twisted.ensureDeferred
async def test_a_prerendered_answer_is_what_twisted_would_write(serve: Callable[..., Served]) -> None:
    """
    The answer rendered once for many clients (a GET on a keep-alive
    HTTP/1.1 connection) has the same status line, headers and body as
    the request machinery writes for a client that closes its connection
    (but for its ``Connection: close``, and the date).
    """
    site = hot_site(serve, memory=False)
    site.hub.publish(Point(1, T0, 1000))

    def both() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as s:
            s.sendall(b"GET /last/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_response(s)
        closing = b"GET /last/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        return head + b"\r\n\r\n" + body, _raw(site.port, closing)

    kept, closed = await deferToThread(both)

    def plain(answer: bytes) -> list[bytes]:
        return [line for line in answer.split(b"\r\n") if not line.startswith((b"Date: ", b"Connection: "))]

    assert kept.endswith(f"\r\n\r\n[{T0},1000]".encode())
    assert plain(kept) == plain(closed)


def _raw(port: int, request: bytes) -> bytes:
    """:return: the whole raw answer to ``request``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_client_hanging_up_leaves_no_waiter(serve: Callable[..., Served]) -> None:
    """
    A client that closes its connection mid long-poll is removed at once.
    """
    site = hot_site(serve, memory=False)
    sockets = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", site.port))
        s.sendall(b"GET /blip/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        sockets.append(s)
    await wait_until(lambda: site.hub.waiting == 3)
    for s in sockets[:2]:
        s.close()
    await wait_until(lambda: site.hub.waiting == 1)
    sockets[2].close()
    await wait_until(lambda: site.hub.waiting == 0)


@pytest_twisted.ensureDeferred
async def test_long_polls_on_one_keep_alive_connection(serve: Callable[..., Served]) -> None:
    """
    A client on a persistent HTTP/1.1 connection parks, gets a point, and
    parks again on the same connection for the next one; the answers carry
    the same headers as every legacy answer.
    """
    site = hot_site(serve, memory=False)
    s = socket.create_connection(("127.0.0.1", site.port), timeout=10)
    try:
        for n in range(3):
            s.sendall(b"GET /blip/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_until(lambda: site.hub.waiting == 1)
            reading = deferToThread(read_response, s)
            site.hub.publish(Point(1, T0 + 900_000 + n, 100 + n))
            head, body = await reading
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert body == f"[{T0 + 900_000 + n},{100 + n}]".encode()
            for header in (b"Access-Control-Allow-Origin: *", b"Content-Type: application/json",
                           b"Cache-Control: max-age=0, must-revalidate", b"Date: "):
                assert header in head
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_long_poll_over_http_1_0_and_head(serve: Callable[..., Served]) -> None:
    """
    An HTTP/1.0 client gets its point and the connection closes; a HEAD
    long-poll gets the headers alone.
    """
    site = hot_site(serve, memory=False)
    old = deferToThread(_raw, site.port, b"GET /blip/1 HTTP/1.0\r\n\r\n")
    head = deferToThread(_raw, site.port, b"HEAD /blip/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await wait_until(lambda: site.hub.waiting == 2)
    site.hub.publish(Point(1, T0 + 950_000, 77))
    answer = await old
    assert answer.startswith(b"HTTP/1.0 200 OK")
    assert answer.endswith(f"\r\n\r\n[{T0 + 950_000},77]".encode())
    answer = await head
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: " in answer and answer.endswith(b"\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_clients_that_never_read_do_not_hold_up_others(serve: Callable[..., Served]) -> None:
    """
    A client that pipelines requests for large answers and never reads
    them, and clients whose long-polls are answered but never read, do not
    stop other clients from being answered.
    """
    site = hot_site(serve, memory=False)
    await site.store.insert([Point(5, T0 + i, 1) for i in range(2000)])
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", site.port))
    hog.setblocking(False)
    pipelined = b"GET /since/5/0 HTTP/1.1\r\nHost: x\r\n\r\n" * 500
    try:
        hog.send(pipelined)
    except BlockingIOError:
        pass
    sleepers = []
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", site.port))
        s.sendall(b"GET /blip/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        sleepers.append(s)
    try:
        await wait_until(lambda: site.hub.waiting == 2)
        site.hub.publish(Point(1, T0 + 900_000, 5))
        for _ in range(20):
            code, _, content = await site.get("/last/1")
            assert (code, content) == (200, f"[{T0 + 900_000},5]".encode())
        code, _, content = await site.get("/since/5/0")
        assert code == 200 and content.count(b"],[") == 1999
    finally:
        hog.close()
        for s in sleepers:
            s.close()
