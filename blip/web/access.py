"""
Who may use the HTTP side: ``--allow`` lists the networks whose clients are
served, everything else gets ``403`` with a JSON body; ``--trusted-proxy``
lists the reverse proxies whose ``X-Forwarded-For`` and ``Forwarded``
headers name the real client. A connection from anyone else outside
``--allow`` is refused as it opens (see :mod:`blip.web.connections`); the
client behind a trusted proxy is judged by each request's headers.

The client of a request from a trusted proxy is found in each of those
headers the request carries: the rightmost address that is not itself a
trusted proxy (each proxy appends the address it was reached from, so the
entries left of the last untrusted one may be made up by the client). When a
request carries both headers, both clients must be allowed: a proxy keeps
one of them and passes the other on as the client sent it, so a header can
only ever narrow what is allowed, never widen it. Headers from anyone else
are ignored. A connection over a Unix socket counts as coming from
127.0.0.1.
"""

from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any, Optional, Sequence, Union

from twisted.internet import address
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from blip.common.throttle import Throttle
from blip.counters import Counters
from blip.web.errors import refuse

IP = Union[IPv4Address, IPv6Address]
Network = Union[IPv4Network, IPv6Network]

#: Seconds between two log lines about refused requests.
LOG_INTERVAL = 60.0
LOCALHOST = IPv4Address("127.0.0.1")


def network(text: str) -> Network:
    """
    Read a network (``10.0.0.0/8``, ``2001:db8::/32``) or a single address.

    :raise ValueError: with a message saying what is wrong.
    """
    try:
        return ip_network(text.strip(), strict=True)
    except ValueError as e:
        try:
            loose = ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"not an address or network: {text!r}") from None
        raise ValueError(f"{text!r} has host bits set; did you mean {loose}? ({e})") from None


def _plain(ip: IP) -> IP:
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def header_address(text: str) -> Optional[IP]:
    """
    Read one entry of ``X-Forwarded-For`` or one ``for=`` of ``Forwarded``:
    an address, maybe quoted, maybe with a port (``198.51.100.7:4711``,
    ``"[2001:db8::17]:4711"``).

    :return: the address, or None for anything else (``unknown``, an
        obfuscated name, garbage).
    """
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return _plain(ip_address(text))
    except ValueError:
        return None


def forwarded_for(values: Sequence[bytes]) -> list[Optional[IP]]:
    """
    :return: the ``for=`` addresses of ``Forwarded`` header lines, in order.
    """
    found = []
    for value in values:
        for element in value.decode("latin-1").split(","):
            for pair in element.split(";"):
                name, equals, text = pair.partition("=")
                if equals and name.strip().lower() == "for":
                    found.append(header_address(text))
    return found


def x_forwarded_for(values: Sequence[bytes]) -> list[Optional[IP]]:
    """
    :return: the addresses of ``X-Forwarded-For`` header lines, in order.
    """
    return [
        header_address(entry)
        for value in values
        for entry in value.decode("latin-1").split(",")
        if entry.strip()
    ]


def peer_address(peer: Any) -> Optional[IP]:
    """
    :return: the address a connection comes from (127.0.0.1 over a Unix
        socket), or None if it has none.
    """
    if isinstance(peer, (address.IPv4Address, address.IPv6Address)):
        try:
            return _plain(ip_address(peer.host.split("%")[0]))
        except ValueError:
            return None
    if isinstance(peer, address.UNIXAddress):
        return LOCALHOST
    return None


@dataclass(frozen=True, slots=True)
class Rules:
    """
    Who is served.

    :param allow: the networks whose clients are served; none means all.
    :param proxies: the networks of the trusted reverse proxies.
    """

    allow: tuple[Network, ...] = ()
    proxies: tuple[Network, ...] = ()

    def trusted(self, ip: IP) -> bool:
        """:return: whether ``ip`` is a trusted proxy's."""
        return any(ip in net for net in self.proxies)

    def allowed(self, ip: Optional[IP]) -> bool:
        """:return: whether the client at ``ip`` is served."""
        if not self.allow:
            return True
        return ip is not None and any(ip in net for net in self.allow)

    def refuses_peer(self, peer: Optional[IP]) -> bool:
        """
        :return: whether a connection from ``peer`` is refused whatever it
            asks: it is neither allowed nor a trusted proxy.
        """
        return not self.allowed(peer) and not (peer is not None and self.trusted(peer))

    def clients(
        self, peer: Optional[IP], forwarded: Sequence[bytes], x_forwarded: Sequence[bytes]
    ) -> list[Optional[IP]]:
        """
        :param peer: the address the connection comes from.
        :param forwarded: the request's ``Forwarded`` header lines.
        :param x_forwarded: its ``X-Forwarded-For`` header lines.
        :return: who the request is from: one address per header that
            counts (None where a header does not say), or the peer.
        """
        if peer is None or not self.trusted(peer):
            return [peer]
        found = []
        for chain in (x_forwarded_for(x_forwarded), forwarded_for(forwarded)):
            if chain:
                found.append(self._client(chain))
        return found or [peer]

    def refused(
        self, peer: Optional[IP], forwarded: Sequence[bytes], x_forwarded: Sequence[bytes]
    ) -> list[Optional[IP]]:
        """
        :return: who of the clients of a request (:meth:`clients`) is not
            served; none when it is served.
        """
        return [ip for ip in self.clients(peer, forwarded, x_forwarded) if not self.allowed(ip)]

    def _client(self, chain: list[Optional[IP]]) -> Optional[IP]:
        for ip in reversed(chain):
            if ip is None or not self.trusted(ip):
                return ip
        # Proxies all the way: the first one is the client.
        return chain[0]


class Refusals:
    """
    Counts the clients refused by ``--allow`` and logs them at most once a
    minute.

    :param counters: where they are counted.
    :param clock: spaces out the log lines.
    """

    log = Logger()

    def __init__(self, counters: Counters, clock: IReactorTime) -> None:
        self.counters = counters
        self._throttle = Throttle(clock, LOG_INTERVAL)

    def note(self, client: Optional[IP]) -> str:
        """
        Count a refusal of ``client``.

        :return: who it is, in words.
        """
        self.counters.forbidden += 1
        who = "an unknown address" if client is None else str(client)
        held = self._throttle.due()
        if held is not None:
            self.log.info(
                "refused {count} requests from clients not in --allow since the last"
                " such line; the last from {client}",
                count=held + 1,
                client=who,
            )
        return who


def forbidden_message(who: str) -> str:
    """:return: what a refused client is told."""
    return f"access from {who} is not allowed"


class AccessControl(Resource):
    """
    Serves the requests of allowed clients with the resource it wraps and
    refuses the others with ``403`` and a JSON body.

    :param inner: the site's root resource.
    :param rules: who is served.
    :param refusals: where refusals are counted and logged.
    """

    isLeaf = True

    def __init__(self, inner: IResource, rules: Rules, refusals: Refusals) -> None:
        super().__init__()
        self.inner = inner
        self.rules = rules
        self.refusals = refusals

    def render(self, request: IRequest) -> Any:
        headers = request.requestHeaders
        refused = self.rules.refused(
            peer_address(request.getClientAddress()),
            headers.getRawHeaders(b"forwarded", []),
            headers.getRawHeaders(b"x-forwarded-for", []),
        )
        if not refused:
            return self.inner.render(request)
        who = self.refusals.note(refused[0])
        return refuse(request, 403, forbidden_message(who))


def protect(resource: IResource, rules: Rules, refusals: Refusals) -> IResource:
    """
    :return: ``resource`` behind :class:`AccessControl`, or as it is when
        every client is allowed.
    """
    if not rules.allow:
        return resource
    return AccessControl(resource, rules, refusals)
