"""
Tests of access control: reading networks and forwarding headers, finding
the client behind trusted proxies, the site behind it refusing with 403
JSON, and the refusals logged at most once a minute.
"""

import json
import urllib.error
import urllib.request
from ipaddress import ip_address, ip_network
from typing import Callable

import pytest
import pytest_twisted
from twisted.internet import address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from blip.counters import Counters
from blip.meters import Meters
from blip.model import Point
from blip.web.access import (
    Refusals,
    Rules,
    forwarded_for,
    header_address,
    network,
    peer_address,
    protect,
)
from tests.conftest import TIMEOUT, Served
from tests.test_service import get


def ip(text: str):
    """:return: an address."""
    return ip_address(text)


def test_networks_are_checked() -> None:
    """
    Networks and single addresses of both families are read; a network
    with host bits set is refused with the network it probably meant.
    """
    assert network("172.16.0.0/16") == ip_network("172.16.0.0/16")
    assert network(" 192.0.2.7 ") == ip_network("192.0.2.7/32")
    assert network("2001:db8::/32") == ip_network("2001:db8::/32")
    with pytest.raises(ValueError, match="did you mean 172.16.0.0/16"):
        network("172.16.1.1/16")
    for bad in ("", "172.16", "everyone", "10.0.0.0/33"):
        with pytest.raises(ValueError):
            network(bad)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.0.2.7", "192.0.2.7"),
        (" 192.0.2.7:4711 ", "192.0.2.7"),
        ('"[2001:db8::17]:4711"', "2001:db8::17"),
        ("2001:db8::17", "2001:db8::17"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("[2001:db8::17", None),
    ],
)
def test_header_addresses(text: str, expected) -> None:
    """
    An entry of a forwarding header is an address with or without a port
    and quotes; IPv4 in IPv6 is IPv4; anything else is no address.
    """
    found = header_address(text)
    assert found == (None if expected is None else ip(expected))


def test_forwarded_header_lines() -> None:
    """
    The ``for=`` of every element of every ``Forwarded`` line, in order;
    other parameters and elements without ``for`` are skipped.
    """
    lines = [b'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"',
             b"proto=https, for=198.51.100.1"]
    assert forwarded_for(lines) == [ip("192.0.2.60"), ip("2001:db8:cafe::17"), ip("198.51.100.1")]


def test_peer_addresses() -> None:
    """
    A TCP peer is its address (IPv4 in IPv6 as IPv4); a Unix socket's peer
    counts as 127.0.0.1.
    """
    assert peer_address(address.IPv4Address("TCP", "192.0.2.1", 5)) == ip("192.0.2.1")
    assert peer_address(address.IPv6Address("TCP", "::ffff:192.0.2.1", 5)) == ip("192.0.2.1")
    assert peer_address(address.IPv6Address("TCP", "fe80::1%eth0", 5)) == ip("fe80::1")
    assert peer_address(address.UNIXAddress(None)) == ip("127.0.0.1")


PROXY = Rules(
    allow=(ip_network("192.0.2.0/24"),),
    proxies=(ip_network("10.0.0.1/32"), ip_network("10.9.0.0/16")),
)


@pytest.mark.parametrize(
    "peer, forwarded, x_forwarded, clients",
    [
        # Headers from anyone but a trusted proxy are ignored.
        ("198.51.100.9", [], [b"192.0.2.5"], ["198.51.100.9"]),
        # A trusted proxy without headers is the client itself.
        ("10.0.0.1", [], [], ["10.0.0.1"]),
        ("10.0.0.1", [], [b"192.0.2.5"], ["192.0.2.5"]),
        # The rightmost untrusted entry: what the client wrote left of it
        # does not count, proxies right of it are skipped.
        ("10.0.0.1", [], [b"198.51.100.1, 192.0.2.5, 10.9.3.3"], ["192.0.2.5"]),
        ("10.0.0.1", [], [b"198.51.100.1", b"192.0.2.5"], ["192.0.2.5"]),
        # Proxies all the way: the first one.
        ("10.0.0.1", [], [b"10.9.1.1, 10.9.2.2"], ["10.9.1.1"]),
        # An entry that is no address is no client.
        ("10.0.0.1", [], [b"192.0.2.5, unknown"], [None]),
        ("10.0.0.1", [b"for=192.0.2.6"], [], ["192.0.2.6"]),
        # Both headers: both count.
        ("10.0.0.1", [b"for=192.0.2.6"], [b"198.51.100.1"], ["198.51.100.1", "192.0.2.6"]),
    ],
)
def test_clients_behind_trusted_proxies(peer, forwarded, x_forwarded, clients) -> None:
    """
    Who a request is from, for requests from trusted proxies and others.
    """
    found = PROXY.clients(ip(peer), forwarded, x_forwarded)
    assert found == [None if c is None else ip(c) for c in clients]


def test_without_allow_everyone_is_served() -> None:
    """
    No --allow: every client is allowed and the site is not wrapped.
    """
    rules = Rules(proxies=(ip_network("10.0.0.0/8"),))
    assert rules.allowed(None) and rules.allowed(ip("203.0.113.1"))
    inner = object()
    assert protect(inner, rules, Refusals(Counters(), Clock())) is inner


RULES = Rules(
    allow=(ip_network("192.0.2.0/24"), ip_network("127.0.0.1/32")),
    proxies=(ip_network("127.0.0.1/32"),),
)


@pytest.fixture
def guarded(serve: Callable[..., Served]) -> Served:
    """
    The site on a real port behind access control: 192.0.2.0/24 and the
    proxy 127.0.0.1 are allowed, and 127.0.0.1 is a trusted proxy.
    """
    return serve(Meters(), rules=RULES)


async def request(url: str, headers: dict[bytes, list[bytes]], method: bytes = b"GET"):
    """:return: status, headers and body of one request."""
    from twisted.internet import reactor

    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(method, url.encode(), Headers(headers))
    return response.code, response.headers, await readBody(response)


@pytest_twisted.ensureDeferred
async def test_allowed_clients_are_served_and_others_get_403_json(guarded: Served) -> None:
    """
    Through the trusted proxy, an allowed client is served and any other
    gets 403 with a JSON body naming its address (a problem document
    under /api/v1), also for HEAD (without a body) and for routes that do
    not exist; every refusal is counted.
    """
    url, counters = guarded.url, guarded.counters
    await guarded.store.insert([Point(1, 1_700_000_000_000, 1000)])
    code, _, content = await request(url + "/last/1", {b"X-Forwarded-For": [b"192.0.2.44"]})
    assert (code, content) == (200, b"[1700000000000,1000]")
    code, _, content = await request(url + "/last/1", {})
    assert code == 200
    code, headers, content = await request(
        url + "/last/1", {b"X-Forwarded-For": [b"192.0.2.44, 203.0.113.9"]}
    )
    assert code == 403
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert json.loads(content) == {"error": "access from 203.0.113.9 is not allowed"}
    code, _, content = await request(
        url + "/nowhere", {b"Forwarded": [b"for=192.0.2.44"], b"X-Forwarded-For": [b"203.0.113.9"]}
    )
    assert code == 403
    code, _, content = await request(
        url + "/last/1", {b"X-Forwarded-For": [b"203.0.113.9"]}, b"HEAD"
    )
    assert (code, content) == (403, b"")
    code, _, content = await request(url + "/static/none", {b"X-Forwarded-For": [b"garbage"]})
    assert json.loads(content) == {"error": "access from an unknown address is not allowed"}
    code, headers, content = await request(url + "/api/v1/meters", {b"X-Forwarded-For": [b"203.0.113.9"]})
    assert code == 403
    assert headers.getRawHeaders(b"Content-Type") == [b"application/problem+json"]
    assert json.loads(content) == {
        "type": "about:blank", "title": "Forbidden", "status": 403,
        "detail": "access from 203.0.113.9 is not allowed", "error": "access from 203.0.113.9 is not allowed",
    }
    assert counters.forbidden == 5


def test_daemon_serves_only_allowed_networks(start_daemon, database) -> None:
    """
    ``--allow`` (repeatable, or a list in BLIP_ALLOW) is what the daemon
    serves: 127.0.0.1 outside it gets 403; inside it, answers; forwarding
    headers from a peer that is not a trusted proxy change nothing.
    """
    daemon = start_daemon("--db", database.dsn, "--allow", "10.0.0.0/8", "--allow", "192.0.2.0/24")
    daemon.wait_for("database ready")
    assert get(daemon, "/last/1") == (403, b'{"error":"access from 127.0.0.1 is not allowed"}')
    forged = urllib.request.Request(daemon.url("/last/1"), headers={"X-Forwarded-For": "10.1.1.1"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=TIMEOUT)
    assert refused.value.code == 403
    daemon.stop()
    daemon = start_daemon("--db", database.dsn, env={"BLIP_ALLOW": "10.0.0.0/8, 127.0.0.0/8"})
    daemon.wait_for("database ready")
    assert get(daemon, "/last/1") == (404, b'{"error":"no readings for meter 1"}'), "\n".join(daemon.output)


@pytest_twisted.ensureDeferred
async def test_refusals_are_logged_once_a_minute(
    serve: Callable[..., Served], log_events: EventLoggingObserver
) -> None:
    """
    Refused clients are logged at most once a minute, each line saying how
    many were refused since the last and who was last.
    """
    site = serve(Meters(), rules=Rules(allow=(ip_network("192.0.2.0/24"),)), memory=True)

    def lines() -> list[dict]:
        return [e for e in log_events if "not in --allow" in e.get("log_format", "")]

    for _ in range(3):
        assert (await site.get("/last/1"))[0] == 403
    assert [(e["count"], e["client"]) for e in lines()] == [(1, "127.0.0.1")]
    site.clock.advance(60)
    assert (await site.get("/since/1/0"))[0] == 403
    assert [(e["count"], e["client"]) for e in lines()] == [(1, "127.0.0.1"), (3, "127.0.0.1")]
    assert site.counters.forbidden == 4
