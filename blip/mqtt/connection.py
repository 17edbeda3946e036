"""
The connection to the broker: Twisted opens it (name lookup, TCP, TLS, all
without blocking), :class:`~twisted.application.internet.ClientService`
reopens it with backoff, and paho speaks MQTT over it through
:mod:`blip.mqtt.bridge`. paho's socket-free loop calls (``loop_read``,
``loop_write``, ``loop_misc``) are driven by received data and a
:class:`~twisted.internet.task.LoopingCall`.
"""

import socket
from typing import Any, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from twisted.application.internet import ClientService
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip.common.retry import backoff
from blip.mqtt.bridge import Bridge, BridgedClient
from blip.mqtt.broker import Broker, Message
from blip.mqtt.publisher import Publisher

#: Seconds between keep-alive pings the broker expects; it publishes the
#: will once 1.5 times this passes without a word from us.
KEEPALIVE = 30
#: Seconds between calls of paho's housekeeping (pings, their timeouts).
TICK = 1.0
#: Seconds a closing connection may take to flush before it is cut.
GRACE = 2.0
#: Seconds a connection attempt may take.
CONNECT_TIMEOUT = 10.0


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
        self._bridge = Bridge(self.transport.write, self.close)
        client = BridgedClient(
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
        self._delay = backoff()
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
