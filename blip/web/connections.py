"""
The HTTP side's connections, each counted from the moment it opens, before
any of it is read: one from a client outside ``--allow`` that is not a
trusted proxy is answered ``403`` and closed at once; one past the cap of
connections of its client, or of all, is closed at once, unanswered. The
caps, and those of long-polls and live streams, fit in the descriptors the
process may open, less a reserve for its own files and connections: a
flood of clients can never take the descriptor a spool write, a serial
reopen or a database reconnection needs.
"""

from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Any, Hashable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from blip.common.descriptors import Descriptors
from blip.common.throttle import Throttle
from blip.counters import Counters
from blip.web.access import IP, Refusals, Rules, peer_address

#: Seconds between two log lines about connections over a cap.
LOG_INTERVAL = 60.0
#: Connections of one client address at once, by default.
PER_CLIENT = 256


@dataclass(frozen=True, slots=True)
class Caps:
    """
    Most connections open at once.

    :param total: of all clients.
    :param per_client: of one client address (an IPv6 client's /64); 0
        for no cap. Trusted proxies have none.
    """

    total: int
    per_client: int = PER_CLIENT


def client_key(ip: Optional[IP]) -> Hashable:
    """
    :return: what the connections of one client have in common: its
        address, or for IPv6 its /64 (one host's share of a network).
    """
    if isinstance(ip, IPv6Address):
        return int(ip) >> 64
    return ip


class Entry:
    """
    An open connection, counted until it leaves.

    :param forbidden: who it is from, in words, when it is to be refused
        (a client outside ``--allow``); else None.
    """

    __slots__ = ("door", "client", "forbidden")

    def __init__(self, door: "Door", client: Hashable, forbidden: Optional[str]) -> None:
        self.door = door
        self.client = client
        self.forbidden = forbidden

    def leave(self) -> None:
        """The connection closed."""
        self.door._leave(self.client)


#: The key of connections that count against no client's cap.
_UNCOUNTED = object()


class Door:
    """
    Counts the open connections, and says which may come in.

    :param rules: who is served.
    :param caps: how many connections may be open at once.
    :param counters: where connections are counted.
    :param refusals: where clients refused by ``--allow`` are counted.
    :param clock: spaces out the log lines about connections over a cap.
    """

    log = Logger()

    def __init__(
        self, rules: Rules, caps: Caps, counters: Counters, refusals: Refusals, clock: IReactorTime
    ) -> None:
        self.rules = rules
        self.caps = caps
        self.counters = counters
        self.refusals = refusals
        self._clients: dict[Hashable, int] = {}
        self._throttle = Throttle(clock, LOG_INTERVAL)

    def enter(self, peer: Any) -> Optional[Entry]:
        """
        A connection from ``peer`` (its address) opened.

        :return: None when it is to be closed at once, unanswered (over a
            cap: counted and logged); otherwise its entry, to be left when
            it closes.
        """
        counters = self.counters
        if counters.connections >= self.caps.total:
            self._full("--max-connections")
            return None
        ip = peer_address(peer)
        client = _UNCOUNTED
        if self.caps.per_client and not (ip is not None and self.rules.trusted(ip)):
            client = client_key(ip)
            held = self._clients.get(client, 0)
            if held >= self.caps.per_client:
                self._full("--max-connections-per-client")
                return None
            self._clients[client] = held + 1
        counters.connections += 1
        forbidden = self.refusals.note(ip) if self.rules.refuses_peer(ip) else None
        return Entry(self, client, forbidden)

    def _leave(self, client: Hashable) -> None:
        self.counters.connections -= 1
        if client is not _UNCOUNTED:
            held = self._clients[client] - 1
            if held:
                self._clients[client] = held
            else:
                del self._clients[client]

    def _full(self, cap: str) -> None:
        self.counters.connections_refused += 1
        held = self._throttle.due()
        if held is not None:
            self.log.warn(
                "closed {count} connections at once since the last such line: over"
                " {cap} (the last one)",
                count=held + 1,
                cap=cap,
            )


@dataclass(frozen=True, slots=True)
class Plan:
    """
    What the HTTP side may hold at once.

    :param caps: connections.
    :param waiters: parked long-polls, and live streams.
    """

    caps: Caps
    waiters: int


def plan(
    descriptors: Descriptors, max_connections: Optional[int], per_client: int, max_waiters: int
) -> Plan:
    """
    Fit the caps of connections, long-polls and live streams in the
    descriptors client connections may take, and say so in the log, with
    a warning for each cap lowered.

    :param max_connections: the cap asked for (None: as many as fit).
    """
    room = descriptors.room
    total = room if max_connections is None else min(max_connections, room)
    waiters = min(max_waiters, total)
    asked = {"--max-connections": (max_connections, total), "--max-waiters": (max_waiters, waiters)}
    for option, (wanted, given) in asked.items():
        if wanted is not None and given < wanted:
            Door.log.warn(
                "{option} {wanted} lowered to {given}: the process may open {limit} files"
                " (RLIMIT_NOFILE; systemd's LimitNOFILE=), {reserve} of them kept for its own",
                option=option,
                wanted=wanted,
                given=given,
                limit=descriptors.limit,
                reserve=descriptors.reserve,
            )
    Door.log.info(
        "serving at most {total} connections ({per_client}), {waiters} long-polls and as many"
        " live streams; the process may open {limit} files",
        total=total,
        per_client=f"{per_client} per client" if per_client else "no cap per client",
        waiters=waiters,
        limit=descriptors.limit,
    )
    return Plan(Caps(total, per_client), waiters)
