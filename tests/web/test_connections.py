"""
Tests of the site's connections: a client outside --allow refused as it
connects, before a byte of it is read; caps on the connections of one
client and of all, closing the ones over them at once; and the caps fitted
in the descriptors the process may open.
"""

import json
import resource
import socket
from ipaddress import ip_address, ip_network
from typing import Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread

from blip.common.descriptors import RESERVE, Descriptors, raise_limit
from blip.meters import Meters
from blip.model import Point
from blip.web.access import Rules
from blip.web.connections import Caps, client_key, plan
from tests.conftest import TIMEOUT, Served, closed_by_server, exchange, wait_until
from tests.web.test_channel import count_reads, stream_body

T0 = 1_700_000_000_000
LAST = b"GET /last/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """A list of client sockets, all closed after the test."""
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for s in opened:
            s.close()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """:return: an idle connection to the site from ``source``."""
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))


@pytest_twisted.ensureDeferred
async def test_a_refused_client_is_answered_as_it_connects(serve: Callable[..., Served]) -> None:
    """
    A connection from outside --allow (and not from a trusted proxy) is
    answered 403 in JSON as soon as it opens, before it sends anything,
    and closed: a 5 MiB chunked body it streams is never read (the
    server reads nothing of the connection). It is counted and logged as
    a refusal.
    """
    site = serve(Meters(), rules=Rules(allow=(ip_network("192.0.2.0/24"),)))
    read = count_reads(site)
    s = connect(site.port)
    answer = await deferToThread(s.recv, 65536)
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "access from 127.0.0.1 is not allowed"}
    probe = b"GET /last/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    sent, answer = await deferToThread(stream_body, site.port, probe)
    assert sum(read) == 0
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert site.counters.forbidden == 2
    await wait_until(lambda: site.counters.connections == 0)


@pytest_twisted.ensureDeferred
async def test_a_trusted_proxy_connects_and_its_client_decides(serve: Callable[..., Served]) -> None:
    """
    A trusted proxy outside --allow gets in; the client it forwards for is
    judged by the request's headers, as before.
    """
    site = serve(Meters(), rules=Rules(
        allow=(ip_network("192.0.2.0/24"),), proxies=(ip_network("127.0.0.1/32"),)
    ))
    await site.store.insert([Point(1, T0, 1000)])
    forwarded = LAST.replace(b"Host: x", b"Host: x\r\nX-Forwarded-For: 192.0.2.9")
    assert await deferToThread(exchange, site.port, forwarded) == (200, b"[1700000000000,1000]")
    code, body = await deferToThread(exchange, site.port, LAST)
    assert (code, json.loads(body)) == (403, {"error": "access from 127.0.0.1 is not allowed"})


@pytest_twisted.ensureDeferred
async def test_connections_over_a_cap_are_closed_at_once(
    serve: Callable[..., Served], sockets: list[socket.socket], log_events: EventLoggingObserver
) -> None:
    """
    Idle connections of one client address fill its cap; the next one is
    closed at once, unanswered, while another address still gets in, up to
    the cap of all connections; past that, any new connection is closed.
    Each closed one is counted, and logged at most once a minute; a
    connection that closes makes room again.
    """
    site = serve(Meters(), caps=Caps(total=5, per_client=3))
    await site.store.insert([Point(1, T0, 1000)])
    for _ in range(3):
        sockets.append(connect(site.port))
    await wait_until(lambda: site.counters.connections == 3)
    over = connect(site.port)
    sockets.append(over)
    await wait_until(lambda: closed_by_server(over))
    assert site.counters.connections_refused == 1
    other = await deferToThread(
        lambda: exchange_from(site.port, "127.0.0.2")
    )
    assert other == (200, b"[1700000000000,1000]")
    sockets.append(connect(site.port, "127.0.0.2"))
    sockets.append(connect(site.port, "127.0.0.3"))
    await wait_until(lambda: site.counters.connections == 5)
    full = connect(site.port, "127.0.0.4")
    sockets.append(full)
    await wait_until(lambda: closed_by_server(full))
    assert site.counters.connections_refused == 2
    assert not any(closed_by_server(s) for s in sockets[:3] + sockets[4:6])
    warnings = [e for e in log_events if "closed {count} connections" in e.get("log_format", "")]
    assert [(e["count"], e["cap"]) for e in warnings] == [(1, "--max-connections-per-client")]
    sockets[0].close()
    await wait_until(lambda: site.counters.connections == 4)
    assert await deferToThread(lambda: exchange_from(site.port, "127.0.0.4")) == (
        200, b"[1700000000000,1000]"
    )


def exchange_from(port: int, source: str) -> tuple[object, bytes]:
    """:return: the status and body of /last/1 asked from ``source``."""
    with connect(port, source) as s:
        s.sendall(LAST)
        answer = b""
        while data := s.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest_twisted.ensureDeferred
async def test_a_trusted_proxy_has_no_cap_of_its_own(
    serve: Callable[..., Served], sockets: list[socket.socket]
) -> None:
    """
    All the clients behind a reverse proxy come from its address: a
    trusted proxy's connections count towards the cap of all connections
    only.
    """
    site = serve(Meters(), caps=Caps(total=6, per_client=2),
                 rules=Rules(proxies=(ip_network("127.0.0.1/32"),)))
    for _ in range(6):
        sockets.append(connect(site.port))
    await wait_until(lambda: site.counters.connections == 6)
    assert site.counters.connections_refused == 0


def test_an_ipv6_client_is_its_64() -> None:
    """
    The connections of an IPv6 client are counted by its /64 (one host's
    share); an IPv4 client by its address.
    """
    assert client_key(ip_address("2001:db8::1")) == client_key(ip_address("2001:db8::ffff:1"))
    assert client_key(ip_address("2001:db8::1")) != client_key(ip_address("2001:db8:0:1::1"))
    assert client_key(ip_address("192.0.2.1")) != client_key(ip_address("192.0.2.2"))


def test_caps_fit_in_the_descriptors(log_events: EventLoggingObserver) -> None:
    """
    Connections, long-polls and live streams are capped by what the
    descriptor limit leaves once the reserve is kept, each cap lowered to
    it saying so once; caps that fit stay as given.
    """
    held = plan(Descriptors(1024, 1024), None, 256, 10_000)
    assert (held.caps, held.waiters) == (Caps(1024 - RESERVE, 256), 1024 - RESERVE)
    warnings = [e for e in log_events if "lowered to" in e.get("log_format", "")]
    assert [(e["option"], e["wanted"], e["given"]) for e in warnings] == [
        ("--max-waiters", 10_000, 1024 - RESERVE)
    ]
    held = plan(Descriptors(1024, 1024), 5000, 0, 10_000)
    assert held.caps == Caps(1024 - RESERVE, 0)
    held = plan(Descriptors(65536, 1024), 3000, 10, 100)
    assert (held.caps, held.waiters) == (Caps(3000, 10), 100)
    # A tiny limit keeps half for the daemon.
    assert Descriptors(100, 100).room == 50


def test_the_open_files_limit_is_raised_to_the_hard_one() -> None:
    """
    The soft limit on open files is raised to the hard limit; with a
    reactor that watches descriptors with select(), it is left, and only
    what select() can watch counts.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        # (Only its kind counts: one never started.)
        selecting = SelectReactor.__new__(SelectReactor)
        assert raise_limit(selecting) == Descriptors(256, 256)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 256
        from twisted.internet import reactor

        found = raise_limit(reactor)
        assert found.before == 256 and found.limit == min(hard, 1 << 20)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == found.limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
