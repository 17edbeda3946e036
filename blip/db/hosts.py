"""
The hosts of a connection string: their names resolved without blocking,
and each host tried on its own.

libpq resolves the names of ``host=`` itself, with ``getaddrinfo``, on the
thread that starts the connection: on the reactor's, a slow or silent name
server would stop the daemon for as long as it takes. So the names are
resolved first by Twisted's resolver (which does not block the reactor),
and libpq is given the addresses as ``hostaddr=`` with ``host=`` kept: it
then connects to the addresses and still uses the names for TLS
certificate checks, the password file and its messages.

A list of hosts (``host=a,b port=5432,5433``, or the URI form
``postgresql://a:5432,b:5433/db``), the way to follow a failover, is
split into one attempt per host address, tried in turn by the caller:
libpq tries the hosts of a list in turn too, but applies
``connect_timeout`` only to connections it opens while blocking, so in a
connection opened without (the daemon's), a host that accepts and never
answers, or a dead machine that drops every packet, would hold the
connection on it, and the next host would never be tried. Each attempt
keeps the other settings, so libpq still checks ``target_session_attrs``
on the one host; ``prefer-standby`` becomes a round of ``standby`` over
every host, then one of ``any``, and ``load_balance_hosts=random``
shuffles the attempts, as libpq would.

What needs no resolving or splitting is left to libpq: one Unix-socket
folder, one address written as numbers, an empty host (libpq's default),
a ``hostaddr=`` given, and a ``service=`` without a host (the service
file's host is libpq's to read).
"""

import ipaddress
import os
import random
from typing import Mapping, Optional

import psycopg2
import psycopg2.extensions
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from zope.interface import implementer


@implementer(IResolutionReceiver)
class _Addresses:
    """
    Collects the addresses of one name as Twisted's resolver finds them.
    """

    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: object) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str) and host not in self.found:
            self.found.append(host)

    def resolutionComplete(self) -> None:
        if not self.done.called:  # unless no one waits any more
            self.done.callback(self.found)


def resolve(resolver: IHostnameResolver, name: str) -> "Deferred[list[str]]":
    """
    :return: the addresses of ``name`` (IPv4 and IPv6, as text, in the
        resolver's order, each once); none when it does not resolve.
    """
    receiver = _Addresses()
    resolver.resolveHostName(receiver, name, 0)
    return receiver.done


#: The environment variables of settings whose name is not PG and the
#: setting's own in capitals.
_VARIABLES = {
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}


def _setting(given: Mapping[str, str], name: str) -> Optional[str]:
    """
    :return: a setting of the connection string, or of its environment
        variable as libpq would read it when the string does not set it.
    """
    if name in given:
        return given[name]
    return os.environ.get(_VARIABLES.get(name, "PG" + name.upper()))


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def _socket(host: str) -> bool:
    """
    :return: whether libpq takes ``host`` for a Unix-socket folder (an
        absolute path, or an abstract socket's name).
    """
    return host.startswith(("/", "@"))


def _given(dsn: str, settings: Mapping[str, str]) -> Optional[dict[str, str]]:
    """
    :return: the settings of ``dsn``, overridden by ``settings``; None
        when ``dsn`` cannot be read (connecting says what is wrong).
    """
    try:
        return {**psycopg2.extensions.parse_dsn(dsn), **settings}
    except psycopg2.ProgrammingError:
        return None


def listed(dsn: str, settings: Optional[Mapping[str, str]] = None) -> list[tuple[str, str]]:
    """
    :param dsn: a libpq connection string or URI.
    :param settings: the settings given besides it (which win over it).
    :return: the hosts a connection tries, each with its port (``""`` for
        libpq's default), in order; none when libpq alone knows them (no
        host, a ``hostaddr`` given, a string it cannot read, or lists of
        hosts and ports of different lengths: libpq then says what is
        wrong).
    """
    given = _given(dsn, settings or {})
    if given is None:
        return []
    host = _setting(given, "host")
    if not host or _setting(given, "hostaddr"):
        return []
    hosts = host.split(",")
    ports = (_setting(given, "port") or "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return []
    return list(zip(hosts, ports))


#: What is wrong with a connection string for writing that
#: :func:`may_reach_a_standby`, said after the option that gave it.
SEVERAL_HOSTS = (
    "names several hosts: add target_session_attrs=read-write"
    " (?target_session_attrs=read-write to a URI), so that blipserver writes"
    " to the one that takes writes, never to a standby"
)


def may_reach_a_standby(dsn: str) -> bool:
    """
    :return: whether a connection to ``dsn`` may reach a server that takes
        no writes: it names several hosts without asking for one that takes
        writes (``target_session_attrs`` ``read-write`` or ``primary``, in
        the string or in ``PGTARGETSESSIONATTRS``).
    """
    given = _given(dsn, {}) or {}
    writes = _setting(given, "target_session_attrs") in ("read-write", "primary")
    return len(listed(dsn)) > 1 and not writes


async def attempts(dsn: str, settings: Mapping[str, str], resolver: IHostnameResolver) -> list[dict[str, str]]:
    """
    Resolve the host names a connection would use, and split a list of
    hosts into one attempt per address.

    :param dsn: a libpq connection string or URI.
    :param settings: the settings given besides it (which win over it).
    :param resolver: resolves names without blocking.
    :return: the settings to add for each attempt, in the order to try
        them: ``host``, ``hostaddr`` (the address; empty for a
        Unix-socket folder) and ``port`` (unless none is given) of one
        address, a name once per address it has, and the
        ``target_session_attrs`` of the round for ``prefer-standby``;
        nothing when libpq may be given the string as it is (one address
        and no name to resolve).
    :raise psycopg2.OperationalError: when no name resolves, as libpq would
        fail; names that do not resolve are left out when others do.
    """
    hosts = listed(dsn, settings)
    names = sorted({h for h, _ in hosts if h and not _socket(h) and not _numeric(h)})
    if not names and len(hosts) < 2:
        return []
    results = await DeferredList([resolve(resolver, name) for name in names], consumeErrors=True)
    found = {name: addresses if ok else [] for name, (ok, addresses) in zip(names, results)}
    ported = any(port for _, port in hosts)
    entries: list[dict[str, str]] = []
    for name, port in hosts:
        addresses = found[name] if name in found else [name if _numeric(name) else ""]
        for address in addresses:
            entry = {"host": name, "hostaddr": address}
            if ported:
                entry["port"] = port
            entries.append(entry)
    if not entries:
        missing = ", ".join(f'"{name}"' for name in names)
        raise psycopg2.OperationalError(f"could not translate host name {missing} to address")
    given = _given(dsn, settings) or {}
    if _setting(given, "load_balance_hosts") == "random":
        random.shuffle(entries)
    if _setting(given, "target_session_attrs") == "prefer-standby":
        entries = [{**entry, "target_session_attrs": kind} for kind in ("standby", "any") for entry in entries]
    return entries
