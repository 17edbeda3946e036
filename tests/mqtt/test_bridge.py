"""
Pins what :mod:`blip.mqtt.bridge` relies on in paho-mqtt, with no network:
``reconnect()`` takes its socket from ``_create_socket`` and needs nothing
of it but ``recv``, ``send``, ``setblocking`` and ``close``; a
``BlockingIOError`` from ``recv`` means nothing waits, ``b""`` a closed
connection; packets go out through ``send`` as soon as paho makes them;
paho closes the socket after a refusal and after a disconnect. A paho
upgrade that changes any of them fails here.
"""

from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from blip.mqtt.bridge import Bridge, BridgedClient

#: The broker's answers: accepted, and refused (not authorised).
CONNACK = b"\x20\x02\x00\x00"
REFUSED = b"\x20\x02\x00\x05"


class Wire:
    """
    A paho client connected through a bridge to nothing but lists: what it
    sends, whether it closed the connection, and the broker's answers.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = 0
        self.answers: list[Any] = []
        self.bridge = Bridge(self.sent.append, self.close)
        self.client = BridgedClient(
            CallbackAPIVersion.VERSION2,
            client_id="blip-test",
            clean_session=True,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        self.client.bridge = self.bridge
        self.client.will_set("blip/status", "offline", qos=1, retain=True)
        self.client.on_connect = lambda client, userdata, flags, reason, properties: (
            self.answers.append(reason)
        )
        self.client.connect_async("broker.invalid", 1883, keepalive=30)

    def close(self) -> None:
        """The bridge closes the connection."""
        self.closed += 1

    def answer(self, packet: bytes) -> MQTTErrorCode:
        """:return: what paho's read of the broker's ``packet`` says."""
        self.bridge.received += packet
        return self.client.loop_read()


def test_reconnect_takes_the_bridge_and_sends_connect_through_it() -> None:
    """
    ``reconnect()`` opens no socket: it takes the bridge, and the CONNECT
    packet (client id and will included) goes out through it at once.
    """
    wire = Wire()
    assert wire.client.reconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert wire.client.socket() is wire.bridge
    connect = b"".join(wire.sent)
    assert connect[0] == 0x10
    assert b"blip-test" in connect and b"blip/status" in connect and b"offline" in connect


def test_nothing_to_read_is_not_an_error() -> None:
    """
    A read while nothing has arrived (``recv`` raising BlockingIOError)
    leaves the connection as it is.
    """
    wire = Wire()
    wire.client.reconnect()
    assert wire.client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert wire.client.socket() is wire.bridge and wire.closed == 0


def test_an_accepted_connection_publishes_through_the_bridge() -> None:
    """
    The broker's acceptance reaches ``on_connect`` as a success; a publish
    goes out through the bridge at once, with its retain flag.
    """
    wire = Wire()
    wire.client.reconnect()
    assert wire.answer(CONNACK) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [reason.is_failure for reason in wire.answers] == [False]
    wire.sent.clear()
    wire.client.publish("blip/1/power", "12.5", qos=0, retain=True)
    assert b"".join(wire.sent) == b"\x31\x12\x00\x0cblip/1/power12.5"
    assert not wire.client.want_write()


def test_a_refusal_is_reported_and_closes_the_connection() -> None:
    """
    The broker's refusal reaches ``on_connect`` as a failure, and paho
    closes the bridge.
    """
    wire = Wire()
    wire.client.reconnect()
    wire.answer(REFUSED)
    assert [reason.is_failure for reason in wire.answers] == [True]
    assert wire.client.socket() is None and wire.closed == 1


def test_disconnect_says_goodbye_and_closes_the_connection() -> None:
    """
    ``disconnect()`` sends DISCONNECT through the bridge and closes it.
    """
    wire = Wire()
    wire.client.reconnect()
    wire.answer(CONNACK)
    wire.sent.clear()
    wire.client.disconnect()
    assert b"".join(wire.sent) == b"\xe0\x00"
    assert wire.client.socket() is None and wire.closed == 1


def test_a_closed_connection_reads_as_lost() -> None:
    """
    Once the connection is closed (``recv`` returning ``b""``), paho's
    read reports it lost and lets go of the bridge; a send on it then
    fails.
    """
    wire = Wire()
    wire.client.reconnect()
    wire.answer(CONNACK)
    wire.bridge.closed = True
    assert wire.client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS
    assert wire.client.socket() is None
    assert wire.client.publish("blip/1/power", "1.0").rc != MQTTErrorCode.MQTT_ERR_SUCCESS
