"""
The host names of a connection string, resolved without blocking.

libpq resolves the names of ``host=`` itself, with ``getaddrinfo``, on the
thread that starts the connection: on the reactor's, a slow or silent name
server would stop the daemon for as long as it takes. So the names are
resolved first by Twisted's resolver (which does not block the reactor),
and libpq is given the addresses as ``hostaddr=`` with ``host=`` kept: it
then connects to the addresses and still uses the names for TLS
certificate checks, the password file and its messages.

What needs no resolving is left to libpq: Unix-socket folders, addresses
written as numbers, an empty host (libpq's default), a ``hostaddr=`` given,
and a ``service=`` without a host (the service file's host is libpq's to
read).
"""

import ipaddress
import os
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


def _setting(given: Mapping[str, str], name: str) -> Optional[str]:
    """
    :return: a setting of the connection string, or of its environment
        variable as libpq would read it when the string does not set it.
    """
    if name in given:
        return given[name]
    return os.environ.get("PG" + name.upper())


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


async def addressed(dsn: str, settings: Mapping[str, str], resolver: IHostnameResolver) -> dict[str, str]:
    """
    Resolve the host names a connection would use.

    :param dsn: a libpq connection string or URI.
    :param settings: the settings given besides it (which win over it).
    :param resolver: resolves names without blocking.
    :return: the settings to add so that libpq resolves nothing: ``host``,
        ``hostaddr`` and ``port`` as lists of equal length, each name once
        per address it has (libpq tries them in turn, as it tries every
        address of a name); nothing when there is no name to resolve.
    :raise psycopg2.OperationalError: when no name resolves, as libpq would
        fail; names that do not resolve are left out when others do.
    """
    try:
        given = {**psycopg2.extensions.parse_dsn(dsn), **settings}
    except psycopg2.ProgrammingError:
        return {}  # connecting says what is wrong with it
    host = _setting(given, "host")
    if not host or _setting(given, "hostaddr"):
        return {}
    hosts = host.split(",")
    ports = (_setting(given, "port") or "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return {}  # libpq says what is wrong
    names = sorted({h for h in hosts if h and not _socket(h) and not _numeric(h)})
    if not names:
        return {}
    results = await DeferredList([resolve(resolver, name) for name in names], consumeErrors=True)
    found = {name: addresses if ok else [] for name, (ok, addresses) in zip(names, results)}
    entries: list[tuple[str, str, str]] = []
    for name, port in zip(hosts, ports):
        if name in found:
            entries += [(name, address, port) for address in found[name]]
        else:
            entries.append((name, name if name and _numeric(name) else "", port))
    if not entries:
        missing = ", ".join(f'"{name}"' for name in names)
        raise psycopg2.OperationalError(f"could not translate host name {missing} to address")
    columns = [",".join(column) for column in zip(*entries)]
    added = {"host": columns[0], "hostaddr": columns[1]}
    if any(port for _, _, port in entries):
        added["port"] = columns[2]
    return added
