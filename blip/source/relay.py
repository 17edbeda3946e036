"""
The Arduino's serial line relayed over the network, as ser2net, ESP-Link and
other serial servers relay it: ``tcp://HOST:PORT`` reads the raw bytes of
the line from a TCP port; ``rfc2217://HOST:PORT`` speaks RFC 2217 (Telnet
with the COM-PORT-OPTION) to the relay, which then sets the line to
``--baudrate``, 8 data bits, no parity, one stop bit.

:class:`RelayEndpoint` connects to the relay for
:class:`~blip.source.device.SerialService`, which reopens a relayed line
with the same backoff as a local device. Host names are resolved by the
reactor's resolver (the system's, in a thread), attempts time out, and TCP
keepalives notice a relay that vanished without closing the connection
(powered off, off the network) within ``--relay-silence`` seconds
(:data:`SILENCE_LIMIT` unless told) of its last word: its loss is then
counted and logged like a device's.
"""

import socket
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

from twisted.conch.telnet import SGA, OptionRefused, Telnet
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from blip.counters import Counters
from blip.source.device import Openings

#: The URL schemes of a relayed serial line.
SCHEMES = ("tcp", "rfc2217")
#: Seconds a connection attempt to one of the relay's addresses may take.
CONNECT_TIMEOUT = 10.0
#: Seconds after the relay's last word (or its last acknowledgement of
#: what blipserver sent it) at which a silent relay is given up for lost,
#: unless --relay-silence says otherwise.
SILENCE_LIMIT = 40
#: The shortest such limit: its keepalive probes are then a second apart.
SHORTEST_SILENCE = 8
#: Unanswered keepalive probes after which the relay is given up for lost.
KEEPALIVE_PROBES = 4

#: Telnet's binary transmission option (RFC 856).
BINARY = b"\x00"
#: RFC 2217's Telnet option, and the commands of it blipserver sends.
COM_PORT_OPTION = b"\x2c"
SET_BAUDRATE = 1
SET_DATASIZE = 2
SET_PARITY = 3
SET_STOPSIZE = 4
#: What the server adds to a command's code in its answer.
SERVER_ANSWER = 100
#: 8 data bits, no parity (RFC 2217's 1), one stop bit.
LINE_SETTINGS = ((SET_DATASIZE, 8), (SET_PARITY, 1), (SET_STOPSIZE, 1))


class RelayError(ValueError):
    """
    A ``--serial`` URL that cannot be used; the message says why.
    """


@dataclass(frozen=True, slots=True)
class Relay:
    """
    Where the serial line is relayed.

    :param scheme: ``tcp`` (raw bytes) or ``rfc2217``.
    :param host: the relay's host name or address.
    :param port: its TCP port.
    """

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def is_relay(serial: str) -> bool:
    """
    :return: whether a ``--serial`` value is meant as a URL rather than a
        device path.
    """
    return "://" in serial


def parse_relay(url: str) -> Relay:
    """
    Read ``tcp://HOST:PORT`` or ``rfc2217://HOST:PORT`` (an IPv6 address in
    brackets).

    :raise RelayError: saying what is wrong.
    """
    expected = "expected tcp://HOST:PORT or rfc2217://HOST:PORT"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise RelayError(f"not a relay URL: {url!r} ({e}; {expected})") from None
    if parts.scheme not in SCHEMES:
        raise RelayError(f"unknown kind of relay {parts.scheme!r} in {url!r}; {expected}")
    if not parts.hostname:
        raise RelayError(f"no host in {url!r}; {expected}")
    if port is None or port == 0:
        raise RelayError(f"no port in {url!r}; {expected}")
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RelayError(f"a relay URL has only a host and a port, not {url!r}; {expected}")
    return Relay(parts.scheme, parts.hostname, port)


def keepalive_times(silence: int) -> tuple[int, int]:
    """
    :param silence: seconds after a peer's last word at which it is given
        up (at least :data:`SHORTEST_SILENCE`).
    :return: the seconds without a byte from it before TCP asks whether it
        is still there (half of ``silence``), and between two unanswered
        probes (the other half shared by :data:`KEEPALIVE_PROBES`).
    """
    idle = silence // 2
    return idle, (silence - idle) // KEEPALIVE_PROBES


def keep_alive(transport: ITCPTransport, silence: int = SILENCE_LIMIT) -> None:
    """
    Make the connection notice a peer that went silent: keepalive probes
    from half of ``silence`` seconds without a byte from it on (see
    :func:`keepalive_times`), and give up on data it does not acknowledge
    within ``silence`` seconds. The timings are set where the system lets
    them be (Linux does).
    """
    transport.setTcpKeepAlive(True)
    handle = ISystemHandle(transport).getHandle()
    if not isinstance(handle, socket.socket):
        return
    idle, interval = keepalive_times(silence)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", silence * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            handle.setsockopt(socket.IPPROTO_TCP, option, value)


class ComPort(Telnet):
    """
    RFC 2217's client side, in front of the protocol reading the line: asks
    the relay to set the line to ``baudrate`` 8N1 and hands on the line's
    bytes, unescaped from Telnet. The protocol is given the TCP transport
    itself, to close; it must not write (what it wrote would reach the
    relay unescaped).

    :param line: the protocol that reads the line.
    :param relay: the relay, for the log.
    :param baudrate: the line's speed.
    """

    log = Logger()

    def __init__(self, line: IProtocol, relay: Relay, baudrate: int) -> None:
        super().__init__()
        self.line = line
        self.relay = relay
        self.baudrate = baudrate
        self.negotiationMap[COM_PORT_OPTION] = self._answered

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.line.makeConnection(self.transport)
        for option in (BINARY, SGA):
            self.will(option).addErrback(lambda f: None)
            self.do(option).addErrback(lambda f: None)
        self.will(COM_PORT_OPTION).addCallbacks(self._agreed, self._refused)

    def _agreed(self, _: object) -> None:
        self._send(SET_BAUDRATE, self.baudrate.to_bytes(4, "big"))
        for command, value in LINE_SETTINGS:
            self._send(command, bytes((value,)))

    def _send(self, command: int, value: bytes) -> None:
        self.requestNegotiation(COM_PORT_OPTION, bytes((command,)) + value)

    def _refused(self, failure: Failure) -> None:
        # Otherwise the connection was lost before the relay answered.
        if failure.check(OptionRefused):
            self.log.warn(
                "the relay {relay} does not take RFC 2217 settings; the line keeps"
                " the speed the relay gives it",
                relay=str(self.relay),
            )

    def _answered(self, data: list[bytes]) -> None:
        answer = b"".join(data)
        if len(answer) == 5 and answer[0] == SERVER_ANSWER + SET_BAUDRATE:
            self.log.info(
                "the relay {relay} set the serial line to {baudrate} baud",
                relay=str(self.relay),
                baudrate=int.from_bytes(answer[1:], "big"),
            )

    def enableLocal(self, option: bytes) -> bool:
        return option in (BINARY, SGA, COM_PORT_OPTION)

    def enableRemote(self, option: bytes) -> bool:
        return option in (BINARY, SGA)

    def dataReceived(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
        except ValueError as e:
            # Twisted's Telnet knows no such command.
            self.log.warn(
                "the relay {relay} does not speak Telnet as RFC 2217 wants ({why});"
                " connecting again",
                relay=str(self.relay), why=str(e),
            )
            assert self.transport is not None
            self.transport.loseConnection()

    def applicationDataReceived(self, data: bytes) -> None:
        self.line.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.line.connectionLost(reason)


class _ComPortFactory(ClientFactory):
    """
    Puts a :class:`ComPort` in front of each protocol of ``factory``.
    """

    noisy = False

    def __init__(self, factory: IProtocolFactory, relay: Relay, baudrate: int) -> None:
        self.factory = factory
        self.relay = relay
        self.baudrate = baudrate

    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[ComPort]:
        # A TCP connection always has the relay's address.
        assert addr is not None
        line = self.factory.buildProtocol(addr)
        if line is None:
            return None
        return ComPort(line, self.relay, self.baudrate)


@implementer(IStreamClientEndpoint)
class RelayEndpoint:
    """
    Connects to the relay of the serial line, for
    :class:`~blip.source.device.SerialService`, which connects again with
    backoff after the relay is lost. Counted and logged as a serial device
    is: an attempt that fails before the relay was ever reached is logged
    once, later ones are only counted.

    :param reactor: the reactor, to resolve the host name and connect with.
    :param relay: where the line is relayed.
    :param baudrate: the line's speed, set through RFC 2217 (a raw TCP
        relay keeps its own).
    :param counters: where connections and failures to connect are counted
        (as openings of the serial device).
    :param silence: seconds after the relay's last word at which it is
        given up for lost (see :func:`keep_alive`).
    """

    log = Logger()

    def __init__(
        self, reactor: Any, relay: Relay, baudrate: int, counters: Counters,
        silence: int = SILENCE_LIMIT,
    ) -> None:
        self.relay = relay
        self.baudrate = baudrate
        self.silence = silence
        self.openings = Openings(counters)
        self._tcp = HostnameEndpoint(reactor, relay.host, relay.port, timeout=CONNECT_TIMEOUT)

    def __repr__(self) -> str:
        return f"<RelayEndpoint {self.relay}>"

    def connect(self, protocolFactory: IProtocolFactory) -> "Deferred[IProtocol]":
        factory = protocolFactory
        if self.relay.scheme == "rfc2217":
            factory = _ComPortFactory(protocolFactory, self.relay, self.baudrate)
        connecting: "Deferred[IProtocol]" = self._tcp.connect(factory)
        return connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: Optional[IProtocol]) -> IProtocol:
        if protocol is None:
            raise NoProtocol()
        transport = getattr(protocol, "transport", None)
        if ITCPTransport.providedBy(transport):
            keep_alive(transport, self.silence)
        self.openings.opened()
        self.log.info("reading the serial line relayed by {relay}", relay=str(self.relay))
        if isinstance(protocol, ComPort):
            return protocol.line
        return protocol

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(CancelledError):
            # The service stopped while connecting.
            return failure
        self.openings.failed(
            self.log,
            "cannot connect to the serial relay {relay}: {why}; waiting for it",
            relay=str(self.relay),
            why=failure.getErrorMessage(),
        )
        return failure
