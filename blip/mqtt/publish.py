"""
Publishing to an MQTT broker, the way Home Assistant discovers sensors.

For every meter, blipserver publishes its power in W (the mean over the
last ``--mqtt-interval``, at most once per interval) and its energy in kWh
(a counter of every blip stored, that survives restarts), plus retained
Home Assistant discovery messages and an availability topic with a last
will. Topics, for the prefix ``blip``::

    blip/status                                    online / offline (will)
    blip/<meter>/power                             W, e.g. 1234.5
    blip/<meter>/energy                            kWh, e.g. 8123.456
    homeassistant/sensor/blip/meter<meter>_power/config    discovery
    homeassistant/sensor/blip/meter<meter>_energy/config   discovery

The MQTT protocol is paho-mqtt's; the connection is Twisted's. paho's own
``connect()`` resolves the name, connects and shakes hands over TLS with
blocking calls, which would stall the reactor for seconds while a broker is
unreachable. Here Twisted opens the connection (name lookup, TCP, TLS, all
without blocking), :class:`~twisted.application.internet.ClientService`
reopens it with backoff, and paho reads and writes through
:class:`_Bridge`, a socket-like object on the Twisted transport. paho's
socket-free loop calls (``loop_read``, ``loop_write``, ``loop_misc``) are
driven by received data and a :class:`~twisted.internet.task.LoopingCall`.

A broker outage never slows ingest: points are folded into per-meter sums,
and only the latest message of each topic waits for the broker, so what
waits is bounded by the number of meters; after a reconnect, discovery,
availability and the latest states are published again.
"""

import json
import re
import socket
import typing
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip import __version__
from blip.db.pool import RETRIABLE
from blip.db.readings import Readings
from blip.live.hub import Hub
from blip.meters import Meter, Meters
from blip.model import Point

#: Default ports of mqtt:// and mqtts://.
PORTS = {"mqtt": 1883, "mqtts": 8883}
#: Home Assistant's default discovery prefix.
DISCOVERY = "homeassistant"
#: Seconds between keep-alive pings the broker expects; it publishes the
#: will once 1.5 times this passes without a word from us.
KEEPALIVE = 30
#: Seconds between calls of paho's housekeeping (pings, their timeouts).
TICK = 1.0
#: Seconds a closing connection may take to flush before it is cut.
GRACE = 2.0
#: Seconds a connection attempt may take.
CONNECT_TIMEOUT = 10.0
#: Stamps of blips seen before the stored count is known, kept per meter.
EARLY_MAX = 100_000

_TOPIC_CHARACTERS = re.compile(r"^[^#+\x00]+$")
_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")


class BrokerError(ValueError):
    """
    A broker URL that cannot be used; the message says why and never holds
    the password.
    """


@dataclass(frozen=True, slots=True)
class Broker:
    """
    Where and how to publish.

    :param host: the broker's host name or address.
    :param port: its port.
    :param tls: whether to speak TLS (``mqtts://``); the broker's
        certificate is checked against the system's trusted authorities.
    :param username: the user name to log in with, if any.
    :param password: its password (never logged nor shown).
    :param prefix: the first levels of blipserver's topics.
    :param discovery: Home Assistant's discovery prefix.
    """

    host: str
    port: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    prefix: str = "blip"
    discovery: str = DISCOVERY

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{user}{host}:{self.port}/{self.prefix}"

    @property
    def node(self) -> str:
        """
        The prefix as Home Assistant's ids may spell it.
        """
        return _ID_CHARACTERS.sub("_", self.prefix)

    @property
    def availability(self) -> str:
        """
        The topic saying whether blipserver is publishing.
        """
        return f"{self.prefix}/status"

    def state(self, meter: int, kind: str) -> str:
        """
        :return: the topic of a meter's ``power`` or ``energy``.
        """
        return f"{self.prefix}/{meter}/{kind}"

    def config(self, meter: int, kind: str) -> str:
        """
        :return: the discovery topic of a meter's ``power`` or ``energy``
            sensor.
        """
        return f"{self.discovery}/sensor/{self.node}/meter{meter}_{kind}/config"


def parse_broker(url: str) -> Broker:
    """
    Read a broker URL: ``mqtt://[user[:password]@]host[:port][/prefix]``,
    or ``mqtts://`` for TLS; ``?discovery=PREFIX`` changes Home Assistant's
    discovery prefix. User and password may be percent-encoded.

    :raise BrokerError: saying what is wrong, without the password.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise BrokerError(f"not a broker URL ({_without_password(str(e), url)})") from None
    if parts.scheme not in PORTS:
        raise BrokerError("the URL must start with mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise BrokerError("no host in the URL")
    if parts.fragment:
        raise BrokerError("a broker URL has no #fragment")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"discovery"})
    if unknown:
        raise BrokerError(f"unknown URL option {unknown[0]!r} (known: discovery)")
    prefix = unquote(parts.path).strip("/") or "blip"
    discovery = options.get("discovery", DISCOVERY).strip("/")
    for name, topic in (("prefix", prefix), ("discovery prefix", discovery)):
        if not _TOPIC_CHARACTERS.match(topic) or "//" in topic:
            raise BrokerError(f"the {name} {topic!r} is not a valid topic (no +, #, empty levels)")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Broker(
        host=parts.hostname,
        port=port if port is not None else PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
        username=username,
        password=password,
        prefix=prefix,
        discovery=discovery,
    )


def _without_password(text: str, url: str) -> str:
    password = urlsplit(url).password if "@" in url else None
    return text.replace(password, "***") if password else text


@dataclass(frozen=True, slots=True)
class Message:
    """
    One message to publish.

    :param topic: where.
    :param payload: what (UTF-8 text).
    :param retain: whether the broker keeps it for later subscribers.
    """

    topic: str
    payload: str
    retain: bool = True


def discovery_messages(broker: Broker, meter: Meter) -> list[Message]:
    """
    :return: the retained Home Assistant discovery messages of a meter: a
        power sensor and an energy sensor under one device named from the
        meter's label.
    """
    model = f"{meter.pulses_per_kwh:g} impulses/kWh"
    if meter.multiplier != 1:
        model += f", x{meter.multiplier:g}"
    device = {
        "identifiers": [f"{broker.node}_meter{meter.id}"],
        "name": meter.label or f"Meter {meter.id}",
        "manufacturer": "blipserver",
        "model": model,
        "sw_version": __version__,
    }
    if meter.description:
        device["hw_version"] = meter.description
    common = {
        "availability_topic": broker.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": {"name": "blipserver", "sw_version": __version__},
    }
    power = {
        "name": "Power",
        "unique_id": f"{broker.node}_meter{meter.id}_power",
        "state_topic": broker.state(meter.id, "power"),
        "device_class": "power",
        "state_class": "measurement",
        "unit_of_measurement": "W",
        "suggested_display_precision": 0,
        **common,
    }
    energy = {
        "name": "Energy",
        "unique_id": f"{broker.node}_meter{meter.id}_energy",
        "state_topic": broker.state(meter.id, "energy"),
        "device_class": "energy",
        "state_class": "total_increasing",
        "unit_of_measurement": "kWh",
        "suggested_display_precision": 3,
        **common,
    }
    return [
        Message(broker.config(meter.id, kind), json.dumps(body, separators=(",", ":")))
        for kind, body in (("power", power), ("energy", energy))
    ]


def kwh_text(kwh: float) -> str:
    """
    :return: an energy counter as text, to the Wh's thousandth (rounding
        keeps a growing counter from ever going down).
    """
    return f"{kwh:.6f}".rstrip("0").rstrip(".")


def watts_text(watts: float) -> str:
    """
    :return: a power as text, to a tenth of a W.
    """
    return f"{watts:.1f}"


class _Tally:
    """
    What is known of one meter: blips since its power was last published,
    and its count of blips, once the stored count is known.
    """

    def __init__(self) -> None:
        self.blips = 0
        self.sum_ms = 0
        self.sent_at = float("-inf")
        self.timer: Optional[IDelayedCall] = None
        self.count: Optional[int] = None
        self.early: deque[int] = deque(maxlen=EARLY_MAX)


class Connection(typing.Protocol):
    """
    What the publisher needs of a broker connection (see
    :class:`MqttProtocol`).
    """

    #: Whether the connection takes more messages now.
    writable: bool

    def send(self, message: Message) -> None:
        """
        Publish ``message``.
        """


class Publisher:
    """
    Turns the meters' points into MQTT messages and hands them to the
    broker connection while there is one.

    Only the latest message of each topic waits while the broker is away or
    slow, so what waits never grows beyond a few messages per meter; every
    (re)connection gets availability, discovery and the latest states first.

    :param broker: the topics.
    :param meters: the meters' settings.
    :param clock: times the power publications.
    :param interval: seconds between publications of a meter's power (0:
        every blip).
    """

    log = Logger()

    def __init__(self, broker: Broker, meters: Meters, clock: IReactorTime, interval: float) -> None:
        self.broker = broker
        self.meters = meters
        self.clock = clock
        self.interval = interval
        self._tallies: dict[int, _Tally] = {}
        self._latest: dict[str, Message] = {}
        self._waiting: dict[str, None] = {}
        self._connection: Optional[Connection] = None
        self._latest[broker.availability] = Message(broker.availability, "online")
        for meter in meters:
            self._discover(meter)

    def receive(self, point: Point) -> None:
        """
        Take a new point (a hub listener: never raises, never blocks).
        """
        try:
            self._receive(point)
        except Exception:
            self.log.failure("MQTT publisher failed on {point}", point=point)

    def _receive(self, point: Point) -> None:
        tally = self._tallies.get(point.meter)
        if tally is None:
            tally = self._tallies[point.meter] = _Tally()
            self._discover(self.meters.get(point.meter))
        tally.blips += 1
        tally.sum_ms += point.ms
        if tally.count is None:
            tally.early.append(point.stamp)
        else:
            tally.count += 1
        if tally.timer is None:
            wait = tally.sent_at + self.interval - self.clock.seconds()
            if wait <= 0:
                self._publish_power(point.meter)
            else:
                tally.timer = self.clock.callLater(wait, self._publish_power, point.meter)

    def set_totals(self, totals: Iterable[tuple[int, int, Optional[int]]]) -> None:
        """
        Learn how many blips each meter has stored, and start publishing
        energy counters.

        :param totals: ``(meter, blips stored, stamp of its newest stored
            blip)``; blips seen here with a later stamp are counted on top.
        """
        stored = {meter: (events, last) for meter, events, last in totals}
        for meter in self.meters:
            stored.setdefault(meter.id, (0, None))
        for meter_id, (events, last) in sorted(stored.items()):
            tally = self._tallies.setdefault(meter_id, _Tally())
            unstored = sum(1 for stamp in tally.early if last is None or stamp > last)
            tally.count = int(events) + unstored
            tally.early.clear()
            self._discover(self.meters.get(meter_id))
        for meter_id in sorted(self._tallies):
            self._publish_energy(meter_id)
        self._flush()

    def energy(self, meter_id: int) -> Optional[float]:
        """
        :return: the meter's energy counter in kWh, once known.
        """
        tally = self._tallies.get(meter_id)
        if tally is None or tally.count is None:
            return None
        return tally.count * self.meters.get(meter_id).kwh_per_blip

    @property
    def waiting(self) -> int:
        """
        How many messages wait for the broker.
        """
        return len(self._waiting)

    def attach(self, connection: Connection) -> None:
        """
        Publish through ``connection`` from now on, starting with
        availability, discovery and the latest states.
        """
        self._connection = connection
        self._latest[self.broker.availability] = Message(self.broker.availability, "online")
        self._waiting = dict.fromkeys(self._latest)
        self._flush()

    def detach(self) -> None:
        """
        The connection is gone: keep the latest messages for the next one.
        """
        self._connection = None

    def writable(self) -> None:
        """
        The connection takes messages again.
        """
        self._flush()

    def close(self) -> None:
        """
        Stop the timers of pending power messages (the daemon stops).
        """
        for tally in self._tallies.values():
            if tally.timer is not None and tally.timer.active():
                tally.timer.cancel()
            tally.timer = None

    def _discover(self, meter: Meter) -> None:
        for message in discovery_messages(self.broker, meter):
            if self._latest.get(message.topic) != message:
                self._queue(message)

    def _publish_power(self, meter_id: int) -> None:
        tally = self._tallies[meter_id]
        tally.timer = None
        if tally.blips:
            watts = self.meters.get(meter_id).watts(tally.sum_ms) * tally.blips
            tally.blips = tally.sum_ms = 0
            tally.sent_at = self.clock.seconds()
            self._queue(Message(self.broker.state(meter_id, "power"), watts_text(watts)))
        self._publish_energy(meter_id)
        self._flush()

    def _publish_energy(self, meter_id: int) -> None:
        kwh = self.energy(meter_id)
        if kwh is not None:
            self._queue(Message(self.broker.state(meter_id, "energy"), kwh_text(kwh)))

    def _queue(self, message: Message) -> None:
        self._latest[message.topic] = message
        self._waiting[message.topic] = None

    def _flush(self) -> None:
        connection = self._connection
        while self._waiting and connection is not None and connection.writable:
            topic = next(iter(self._waiting))
            del self._waiting[topic]
            connection.send(self._latest[topic])
            connection = self._connection


class _Bridge:
    """
    The socket paho reads and writes: bytes received on the Twisted
    transport wait here for paho to read; what paho writes goes to the
    transport, which buffers it.
    """

    def __init__(self, protocol: "MqttProtocol") -> None:
        self.protocol = protocol
        self.received = bytearray()
        self.closed = False

    def recv(self, size: int) -> bytes:
        if self.received:
            data = bytes(self.received[:size])
            del self.received[:size]
            return data
        if self.closed:
            return b""
        raise BlockingIOError()

    def send(self, data: Any) -> int:
        if self.closed:
            raise ConnectionError("the connection to the broker is closed")
        self.protocol.transport.write(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.close()

    def setblocking(self, flag: bool) -> None:
        pass


class _Client(paho.Client):
    """
    paho's client, opening no socket of its own: ``reconnect()`` takes the
    bridge to an already open Twisted connection (its one override of
    paho's inner workings, where paho would open a blocking socket).
    """

    bridge: Optional[_Bridge] = None

    def _create_socket(self) -> Any:
        return self.bridge


class MqttProtocol(Protocol):
    """
    One connection to the broker: paho speaks MQTT over it.

    :param link: the connection's owner, told when it is ready, refused or
        lost.
    """

    log = Logger()
    #: The connection to the broker, over TCP or TLS: set before any of
    #: this protocol's methods runs.
    transport: ITCPTransport

    def __init__(self, link: "Link") -> None:
        self.link = link
        self.writable = True
        self._answer: Any = None
        self._answered = False
        self._ticker: Optional[LoopingCall] = None
        self._cut: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        broker = self.link.broker
        # A consumer, like every stream transport, though neither
        # ITransport nor ITCPTransport says so.
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._bridge = _Bridge(self)
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.link.client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        client.bridge = self._bridge
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        client.will_set(broker.availability, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.connect_async(broker.host, broker.port, keepalive=KEEPALIVE)
        self._client = client
        client.reconnect()
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.link.clock
        self._ticker.start(TICK, now=False).addErrback(
            lambda f: self.log.failure("MQTT housekeeping failed", f)
        )

    def dataReceived(self, data: bytes) -> None:
        received = self._bridge.received
        received += data
        while received and self._client.socket() is self._bridge:
            before = len(received)
            if self._client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or len(received) == before:
                break
        self._settle()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._bridge.closed = True
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._cut is not None and self._cut.active():
            self._cut.cancel()
        if self._client.socket() is self._bridge:
            self._client.loop_read()
        self.link.lost(self, reason, self._answered and not self._answer.is_failure)

    def send(self, message: Message) -> None:
        """
        Publish ``message`` (QoS 0: the latest states are published again
        on every connection).
        """
        self._client.publish(message.topic, message.payload, qos=0, retain=message.retain)
        self._settle()

    def goodbye(self, message: Message) -> None:
        """
        Publish a last message, disconnect cleanly (the broker then drops
        the will) and close within :data:`GRACE` seconds.
        """
        if self._client.socket() is self._bridge:
            self._client.publish(message.topic, message.payload, qos=0, retain=message.retain)
            self._client.disconnect()
            self._settle()
        self.close()

    def close(self) -> None:
        """
        Close the connection, cutting it if it has not flushed within
        :data:`GRACE` seconds.
        """
        if self._cut is None:
            self.transport.loseConnection()
            self._cut = self.link.clock.callLater(GRACE, self.transport.abortConnection)

    def pauseProducing(self) -> None:
        self.writable = False

    def resumeProducing(self) -> None:
        self.writable = True
        self.link.writable(self)

    def stopProducing(self) -> None:
        self.writable = False

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        # Inside paho: only note the answer; it is acted on in _settle.
        self._answer = reason

    def _tick(self) -> None:
        self._client.loop_misc()
        self._settle()

    def _settle(self) -> None:
        if self._answer is not None and not self._answered:
            self._answered = True
            if self._answer.is_failure:
                self.link.refused(self, str(self._answer))
                self.close()
            else:
                self.link.ready(self)
        if self._client.socket() is self._bridge and self._client.want_write():
            self._client.loop_write()


class Link:
    """
    Keeps a connection to the broker open (reopened with backoff, also
    after the broker refused it) and hands it to the publisher.

    :param broker: the broker.
    :param publisher: what publishes through the connection.
    :param endpoint: how to reach the broker.
    :param clock: times retries and housekeeping.
    """

    log = Logger()

    def __init__(
        self, broker: Broker, publisher: Publisher, endpoint: IStreamClientEndpoint, clock: IReactorTime
    ) -> None:
        self.broker = broker
        self.publisher = publisher
        self.clock = clock
        self.client_id = f"blipserver-{socket.gethostname()}-{broker.node}"[:64]
        self.connection: Optional[MqttProtocol] = None
        self._unanswered = 0
        self._up = False
        self._delay = backoffPolicy(initialDelay=0.25, maxDelay=30.0, factor=2.0)
        factory = Factory.forProtocol(lambda: MqttProtocol(self))
        # The link logs its own connections, by what they mean.
        factory.noisy = False
        self.service = ClientService(
            endpoint,
            factory,
            retryPolicy=lambda attempt: self._delay(attempt + self._unanswered),
            clock=clock,
        )

    def ready(self, connection: MqttProtocol) -> None:
        """
        The broker accepted ``connection``.
        """
        self._unanswered = 0
        self.connection = connection
        self.log.info("publishing to MQTT broker {broker}", broker=str(self.broker))
        self._up = True
        self.publisher.attach(connection)

    def refused(self, connection: MqttProtocol, why: str) -> None:
        """
        The broker refused ``connection``.
        """
        self.log.error("MQTT broker {broker} refused to connect: {why}", broker=str(self.broker), why=why)

    def writable(self, connection: MqttProtocol) -> None:
        """
        ``connection`` takes messages again.
        """
        if connection is self.connection:
            self.publisher.writable()

    def lost(self, connection: MqttProtocol, reason: Optional[Failure], accepted: bool) -> None:
        """
        ``connection`` is closed; it was ``accepted`` by the broker or not.
        """
        if not accepted:
            # Grow the wait for the next attempt (ClientService counts this
            # connection as a success).
            self._unanswered += 1
        if connection is self.connection:
            self.connection = None
            self.publisher.detach()
        if self._up and self.service.running:
            self._up = False
            self.log.warn(
                "lost MQTT broker {broker}: {why}; reconnecting",
                broker=str(self.broker),
                why=reason.getErrorMessage() if reason is not None else "closed",
            )

    async def stop(self) -> None:
        """
        Say goodbye on the open connection, if any, and stop reconnecting.
        """
        connection = self.connection
        if connection is not None:
            connection.goodbye(Message(self.broker.availability, "offline"))
        await self.service.stopService()


def broker_endpoint(reactor: Any, broker: Broker) -> IStreamClientEndpoint:
    """
    :return: the endpoint reaching ``broker``: TCP, or TLS checked against
        the system's trusted authorities for ``mqtts://``.
    """
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, broker.host, broker.port, timeout=CONNECT_TIMEOUT
    )
    if broker.tls:
        endpoint = wrapClientTLS(optionsForClientTLS(broker.host), endpoint)
    return endpoint


class MqttService(Service):
    """
    Publishes the meters over MQTT while the daemon runs: listens to the
    hub, keeps the broker connection, and loads each meter's stored blip
    count once the database is ready (retried while it is away).

    :param publisher: the publisher.
    :param link: the broker connection.
    :param hub: the live points.
    :param store: the database.
    :param ready: returns a Deferred that fires when the database is ready.
    """

    log = Logger()

    def __init__(
        self,
        publisher: Publisher,
        link: Link,
        hub: Hub,
        store: Readings,
        ready: Callable[[], "Deferred[None]"],
    ) -> None:
        self.publisher = publisher
        self.link = link
        self.hub = hub
        self.store = store
        self.ready = ready
        self._unlisten: Optional[Callable[[], None]] = None
        self._loading: Optional[Deferred[None]] = None

    def startService(self) -> None:
        super().startService()
        self._unlisten = self.hub.listen(self.publisher.receive)
        self.link.service.startService()
        self._loading = self.ready()
        self._loading.addCallback(lambda _: Deferred.fromCoroutine(self._load()))
        self._loading.addErrback(self._failed)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._loading is not None and not self._loading.called:
            self._loading.cancel()
        self.publisher.close()
        return Deferred.fromCoroutine(self.link.stop())

    async def _load(self) -> None:
        failures = 0
        delay = backoffPolicy(initialDelay=0.25, maxDelay=30.0, factor=2.0)
        while self.running:
            try:
                totals = await self.store.blip_totals()
            except RETRIABLE as e:
                failures += 1
                if failures == 1:
                    self.log.warn(
                        "cannot read the stored blip counts for MQTT: {why}; retrying",
                        why=str(e).strip(),
                    )
                await deferLater(self.link.clock, delay(failures), lambda: None)
            else:
                self.publisher.set_totals(totals)
                return

    def _failed(self, f: Failure) -> None:
        if not f.check(CancelledError):
            self.log.failure("MQTT publishing cannot start", f)


def mqtt_service(
    broker: Broker,
    interval: float,
    hub: Hub,
    meters: Meters,
    store: Readings,
    ready: Callable[[], "Deferred[None]"],
    reactor: Any,
    clock: IReactorTime,
) -> MqttService:
    """
    Build the MQTT publishing of the daemon (see :class:`MqttService`).
    """
    publisher = Publisher(broker, meters, clock, interval)
    link = Link(broker, publisher, broker_endpoint(reactor, broker), clock)
    return MqttService(publisher, link, hub, store, ready)
