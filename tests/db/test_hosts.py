"""
Tests of the hosts of connection strings, resolved without blocking and
tried one at a time: what libpq is given (host names kept, each with its
addresses as hostaddr, ports matched, one address per attempt) for
names, lists of hosts, URIs, Unix-socket folders and numeric addresses,
through a resolver of the test's own, with target_session_attrs and
load_balance_hosts; a pool that reaches a database by a name only
Twisted's resolver knows; and one whose first host accepts and never
answers.
"""

import socket
import time
from typing import Any, Iterator

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from zope.interface import implementer

from blip.counters import Counters
from blip.db.embedded import PORT
from blip.db.hosts import attempts, listed, may_reach_a_standby
from blip.db.pool import Pool
from blip.db.txpg import Connection, Detector
from tests.conftest import TIMEOUT, wait_until
from tests.link import Link


@implementer(IHostnameResolver)
class Names:
    """
    A resolver that knows the names of ``table`` (and no other), and
    records what it is asked.
    """

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        """Tell ``receiver`` the addresses of ``hostName`` at once."""
        self.asked.append(hostName)
        receiver.resolutionBegan(None)
        for address in self.table.get(hostName, []):
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, portNumber))
        receiver.resolutionComplete()
        return receiver


NAMES = {
    "db.example": ["10.0.0.1", "fd00::1"],
    "a.example": ["10.0.0.2"],
    "b.example": ["10.0.0.3", "10.0.0.4"],
}


async def addressed(dsn: str, settings: dict[str, str], resolver: Any) -> dict[str, str]:
    """
    :return: the attempts of ``dsn`` as libpq would take them in one
        string: each of host, hostaddr and port as a list (nothing when
        there is nothing to add).
    """
    tried = await attempts(dsn, settings, resolver)
    return {key: ",".join(attempt[key] for attempt in tried) for key in (tried[0] if tried else {})}


@pytest.fixture(autouse=True)
def no_libpq_environment(monkeypatch) -> Iterator[None]:
    """The PG* variables of the environment do not reach these tests."""
    for name in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.mark.parametrize(
    ("dsn", "settings", "added", "asked"),
    [
        ("host=db.example port=5433 dbname=x", {},
         {"host": "db.example,db.example", "hostaddr": "10.0.0.1,fd00::1", "port": "5433,5433"},
         ["db.example"]),
        ("host=db.example", {},
         {"host": "db.example,db.example", "hostaddr": "10.0.0.1,fd00::1"}, ["db.example"]),
        ("postgresql://u@a.example:5432,b.example:5433/db?sslmode=verify-full", {},
         {"host": "a.example,b.example,b.example", "hostaddr": "10.0.0.2,10.0.0.3,10.0.0.4",
          "port": "5432,5433,5433"},
         ["a.example", "b.example"]),
        ("host=/run/postgresql,127.0.0.1,db.example,::1 port=1,2,3,4", {},
         {"host": "/run/postgresql,127.0.0.1,db.example,db.example,::1",
          "hostaddr": ",127.0.0.1,10.0.0.1,fd00::1,::1", "port": "1,2,3,3,4"},
         ["db.example"]),
        ("host=nowhere.example,a.example", {}, {"host": "a.example", "hostaddr": "10.0.0.2"},
         ["a.example", "nowhere.example"]),
        ("host=/tmp dbname=x", {"host": "a.example"},
         {"host": "a.example", "hostaddr": "10.0.0.2"}, ["a.example"]),
        ("postgresql:///db?host=/tmp,/run", {}, {"host": "/tmp,/run", "hostaddr": ","}, []),
        ("host=127.0.0.1,::1 port=5432,5433", {},
         {"host": "127.0.0.1,::1", "hostaddr": "127.0.0.1,::1", "port": "5432,5433"}, []),
        ("postgresql://%2Fvar%2Frun/db", {}, {}, []),
        ("host=127.0.0.1 port=5432", {}, {}, []),
        ("dbname=x", {}, {}, []),
        ("host=db.example hostaddr=10.9.9.9", {}, {}, []),
        ("service=blip", {}, {}, []),
        ("host=a.example,b.example port=1,2,3", {}, {}, []),
    ],
)
@pytest_twisted.ensureDeferred
async def test_what_libpq_is_given(dsn, settings, added, asked) -> None:
    """
    Each name becomes as many attempts as it has addresses, named and
    with their address and port; Unix-socket folders, numeric addresses
    and names that do not resolve (while another does) are kept or left
    out as libpq would use them, a list of them split into attempts;
    nothing is added when there is one host and no name to resolve (or
    a hostaddr, a service file or a wrong list of ports leaves it to
    libpq).
    """
    names = Names(NAMES)
    assert await addressed(dsn, settings, names) == added
    assert sorted(names.asked) == asked


@pytest_twisted.ensureDeferred
async def test_the_environment_and_names_that_do_not_resolve(monkeypatch) -> None:
    """
    A host from PGHOST is resolved as one of the string would be; when no
    name resolves, connecting fails as libpq's would, naming them.
    """
    monkeypatch.setenv("PGHOST", "a.example")
    resolved = {"host": "a.example", "hostaddr": "10.0.0.2"}
    assert await addressed("dbname=x", {}, Names(NAMES)) == resolved
    failed = 'could not translate host name "x.example", "y.example"'
    with pytest.raises(psycopg2.OperationalError, match=failed):
        await addressed("host=x.example,y.example", {}, Names(NAMES))


@pytest_twisted.ensureDeferred
async def test_a_name_only_twisted_knows(database) -> None:
    """
    A pool reaches a database by a name that only Twisted's resolver
    knows (libpq, resolving it itself, would not find it), and the
    connection keeps the name (TLS checks it) with the address beside it.
    A reconnection resolves the name again.
    """
    from twisted.internet import reactor

    link = Link(database.cluster.cluster.sockets / f".s.PGSQL.{PORT}")
    names = Names({"db.blip.invalid": ["127.0.0.1"]})
    previous = reactor.installNameResolver(names)
    try:
        dsn = psycopg2.extensions.make_dsn(database.dsn, host="db.blip.invalid", port=link.port)
        counters = Counters()
        pool = Pool(dsn, 1, reactor, counters)
        await pool.start()
        try:
            assert pool.alive
            settings = await pool.runInteraction(lambda c: c.connection.get_dsn_parameters())
            assert (settings["host"], settings["hostaddr"]) == ("db.blip.invalid", "127.0.0.1")
            [(pid,)] = await pool.runQuery("SELECT pg_backend_pid()")
            database.sql("SELECT pg_terminate_backend(%s)", (pid,))
            # (Not "until the pool is not alive": it may be alive again
            # between two looks.)
            await wait_until(lambda: counters.db_reconnects == 1)
            await pool.when_alive().addTimeout(TIMEOUT, reactor)
            assert await pool.runQuery("SELECT 1") == [(1,)]
        finally:
            pool.close()
    finally:
        reactor.installNameResolver(previous)
        link.close()
    assert names.asked == ["db.blip.invalid"] * 2


@pytest_twisted.ensureDeferred
async def test_rounds_of_prefer_standby_and_random_balancing(monkeypatch) -> None:
    """
    target_session_attrs=prefer-standby becomes a round of standby over
    every address, then one of any; load_balance_hosts=random shuffles
    the attempts (every one of them still there, once); what a single
    attempt sets otherwise passes on to libpq untouched.
    """
    dsn = "host=a.example,b.example target_session_attrs=prefer-standby"
    tried = await attempts(dsn, {}, Names(NAMES))
    hosts = [("a.example", "10.0.0.2"), ("b.example", "10.0.0.3"), ("b.example", "10.0.0.4")]
    assert [(t["host"], t["hostaddr"], t["target_session_attrs"]) for t in tried] == [
        *[(h, a, "standby") for h, a in hosts], *[(h, a, "any") for h, a in hosts]
    ]
    monkeypatch.setattr("random.shuffle", lambda entries: entries.reverse())
    balanced = await attempts(f"{dsn} load_balance_hosts=random", {}, Names(NAMES))
    assert [(t["host"], t["hostaddr"]) for t in balanced[:3]] == hosts[::-1]
    assert all("target_session_attrs" not in t for t in await attempts(
        "host=a.example,b.example target_session_attrs=read-write", {}, Names(NAMES)
    ))


def test_listed_hosts_and_standbys(monkeypatch) -> None:
    """
    The hosts of a string (key=value or URI, with the environment's
    defaults) in order with their ports, and whether it may reach a
    standby: several hosts, without asking for a server that takes writes.
    """
    assert listed("postgresql://a:1,b:2/db") == [("a", "1"), ("b", "2")]
    assert listed("host=a,b port=5") == [("a", "5"), ("b", "5")]
    assert listed("dbname=x") == []
    monkeypatch.setenv("PGHOST", "c,d")
    assert listed("dbname=x") == [("c", ""), ("d", "")]
    assert not may_reach_a_standby("host=a,b target_session_attrs=read-write")
    assert not may_reach_a_standby("postgresql://a,b/db?target_session_attrs=primary")
    assert may_reach_a_standby("host=a,b target_session_attrs=any")
    assert may_reach_a_standby("host=a,b")
    assert not may_reach_a_standby("host=a")
    monkeypatch.setenv("PGTARGETSESSIONATTRS", "read-write")
    assert not may_reach_a_standby("host=a,b")


@pytest_twisted.ensureDeferred
async def test_a_silent_host_is_passed_over(database) -> None:
    """
    A list of hosts whose first accepts connections and never answers (a
    dead primary behind a dark link) reaches the second within the first's
    connect_timeout: libpq, opening without blocking, would wait on the
    first for ever. When none answers, the failure names every host.
    """
    from twisted.internet import reactor

    link = Link(database.cluster.cluster.sockets / f".s.PGSQL.{PORT}")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    try:
        ports = f"{silent.getsockname()[1]},{link.port}"
        dsn = psycopg2.extensions.make_dsn(
            database.dsn, host="127.0.0.1,127.0.0.1", port=ports, connect_timeout=2
        )
        pool = Pool(dsn, 1, reactor)
        started = time.monotonic()
        await pool.start()
        try:
            assert pool.alive
            assert 2 <= time.monotonic() - started < 10
            assert await pool.runQuery("SELECT 1") == [(1,)]
        finally:
            pool.close()
        connection = Connection(reactor, None, Detector(reactor, lambda: iter([])))
        nowhere = f"{silent.getsockname()[1]},{refused.getsockname()[1]}"
        with pytest.raises(psycopg2.OperationalError) as failed:
            await connection.connect(dsn, port=nowhere)
        first, second = (f'connection to server at "127.0.0.1", port {s.getsockname()[1]} failed: '
                         for s in (silent, refused))
        lines = str(failed.value).splitlines()
        assert lines[0] == first + "timeout expired"
        assert lines[1] == second + "Connection refused"
        connection.close_for_good()
    finally:
        silent.close()
        refused.close()
        link.close()
