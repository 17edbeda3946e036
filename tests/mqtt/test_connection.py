"""
Tests of paho over a Twisted connection to a real Mosquitto: publishing
across a broker restart, the goodbye and the will, a refused login retried
with backoff, TLS, and a stalled broker.
"""

import json
import os
import signal
import time
from typing import Callable

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from blip.meters import Meter, Meters
from blip.model import Point
from blip.mqtt.broker import Broker, parse_broker
from blip.mqtt.connection import GRACE, Link, broker_endpoint
from blip.mqtt.publisher import Publisher, kwh_text
from blip.mqtt.service import MqttService
from tests.conftest import TIMEOUT

HOUSE = Meter(id=1, label="House", pulses_per_kwh=600.0, multiplier=4.0)


class Source:
    """This node's ingest, as its observers see it."""

    def __init__(self) -> None:
        self.observers: list = []

    def observe(self, observer) -> Callable[[], None]:
        """Tell ``observer`` of points from now on."""
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)

    def blip(self, point: Point) -> None:
        """A point arrives, and is stored."""
        for observer in self.observers:
            observer.receive(point)
            observer.stored([point])


def running(broker: Broker, meters: Meters, source: Source, store, interval: float = 0.0) -> MqttService:
    """
    :return: a started MQTT service on the real reactor, counting the
        blips of ``store`` and of ``source``.
    """
    publisher_ = Publisher(broker, meters, reactor, interval)
    link = Link(broker, publisher_, broker_endpoint(reactor, broker), reactor)
    service = MqttService(publisher_, link, source, store, lambda: Deferred.fromCoroutine(_nothing()))
    service.startService()
    return service


async def _nothing() -> None:
    """The database is ready at once."""
    return None


def waiting(subscriber, check, what: str = "") -> Deferred:
    """Wait for the subscriber in a thread, so the reactor keeps running."""
    return deferToThread(subscriber.wait_for, check, TIMEOUT, what)


def latest_is(topic: str, payload: str):
    """:return: a check that the latest message of ``topic`` is ``payload``."""
    def check(messages):
        found = [m.payload for m in messages if m.topic == topic]
        return found and found[-1] == payload

    return check


@pytest_twisted.ensureDeferred
async def test_publishes_and_survives_a_broker_restart(mosquitto, store, log_events) -> None:
    """
    Against a real broker: availability, discovery and states arrive; when
    the broker restarts (forgetting everything retained), the daemon
    reconnects with backoff and publishes availability, discovery and the
    latest states again; the password never appears in the log.
    """
    source = Source()
    broker = parse_broker(mosquitto.url())
    subscriber = mosquitto.subscribe()
    await store.insert([Point(1, stamp, 1000) for stamp in range(1, 601)])
    service = running(broker, Meters([HOUSE]), source, store)
    try:
        await waiting(subscriber, latest_is("blip/status", "online"), "online")
        await waiting(subscriber, latest_is("blip/1/energy", "4"), "energy of 600 blips")
        source.blip(Point(1, 610, 1500))
        await waiting(subscriber, latest_is("blip/1/power", f"{HOUSE.watts(1500):.1f}"), "power")

        await deferToThread(mosquitto.stop)
        for stamp in range(611, 911):
            source.blip(Point(1, stamp, 1000))
        await deferLater(reactor, 0.2, lambda: None)
        assert service.publisher.waiting <= 8
        subscriber.close()
        await deferToThread(mosquitto.start)
        subscriber = mosquitto.subscribe()
        await waiting(subscriber, latest_is("blip/status", "online"), "online again")
        energy = kwh_text(901 * HOUSE.kwh_per_blip)
        await waiting(subscriber, latest_is("blip/1/energy", energy), "the energy after the outage")
        await waiting(subscriber, latest_is("blip/1/power", f"{HOUSE.watts(1000):.1f}"), "the power")
        # All of it is retained again for whoever subscribes later.
        subscriber.close()
        subscriber = mosquitto.subscribe()
        retained = await waiting(
            subscriber, lambda ms: {m.topic: m for m in ms if m.retain} if len(ms) >= 5 else None,
        )
        assert {t: m.payload for t, m in retained.items() if "/config" not in t} == {
            "blip/status": "online", "blip/1/energy": energy, "blip/1/power": f"{HOUSE.watts(1000):.1f}",
        }
        config = json.loads(retained["homeassistant/sensor/blip/meter1_energy/config"].payload)
        assert config["state_class"] == "total_increasing"
    finally:
        await service.stopService()
        subscriber.close()
    assert not any(mosquitto.password in repr(event) for event in log_events)
    assert any("lost MQTT broker" in str(event.get("log_format")) for event in log_events)


@pytest_twisted.ensureDeferred
async def test_stopping_says_offline_and_a_crash_leaves_the_will(mosquitto, store) -> None:
    """
    A clean stop publishes ``offline`` (retained) before disconnecting; a
    connection that dies leaves the broker to publish the will,
    ``offline``.
    """
    subscriber = mosquitto.subscribe("blip/status")
    service = running(parse_broker(mosquitto.url()), Meters([HOUSE]), Source(), store)
    await waiting(subscriber, latest_is("blip/status", "online"), "online")
    await service.stopService()
    await waiting(subscriber, latest_is("blip/status", "offline"), "offline at stop")

    service = running(parse_broker(mosquitto.url()), Meters([HOUSE]), Source(), store)
    await waiting(subscriber, latest_is("blip/status", "online"), "online again")
    service.link.connection.transport.abortConnection()
    await waiting(subscriber, latest_is("blip/status", "offline"), "the will")
    await waiting(subscriber, latest_is("blip/status", "online"), "online after reconnecting")
    await service.stopService()
    subscriber.close()


@pytest_twisted.ensureDeferred
async def test_a_refused_login_is_retried_with_backoff(mosquitto, store, log_events) -> None:
    """
    A wrong password is refused by the broker: the refusal is logged (never
    the password), and attempts are spaced by a growing delay.
    """
    broker = parse_broker(mosquitto.url(password="wrong-secret"))
    service = running(broker, Meters([HOUSE]), Source(), store)
    try:
        def refusals() -> list:
            return [e for e in log_events if "refused to connect" in str(e.get("log_format"))]

        started = time.monotonic()
        while len(refusals()) < 3:
            assert time.monotonic() - started < TIMEOUT, "not refused three times"
            await deferLater(reactor, 0.05, lambda: None)
        # Waits of 1 s then 2 s, each plus up to a second of jitter.
        first, second, third = (e["log_time"] for e in refusals()[:3])
        assert 1 <= second - first < third - second
        assert "wrong-secret" not in repr(list(log_events))
        assert service.link.connection is None
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_tls(mosquitto, store, monkeypatch) -> None:
    """
    ``mqtts://`` speaks TLS and checks the broker's certificate against the
    trusted authorities (here the test's own, through SSL_CERT_FILE).
    """
    monkeypatch.setenv("SSL_CERT_FILE", str(mosquitto.folder / "ca.pem"))
    subscriber = mosquitto.subscribe()
    source = Source()
    service = running(parse_broker(mosquitto.url(tls=True)), Meters([HOUSE]), source, store)
    try:
        await waiting(subscriber, latest_is("blip/status", "online"), "online over TLS")
        source.blip(Point(1, 1, 900))
        await waiting(subscriber, latest_is("blip/1/power", f"{HOUSE.watts(900):.1f}"), "power over TLS")
    finally:
        await service.stopService()
        subscriber.close()


@pytest_twisted.ensureDeferred
async def test_a_stalled_broker_holds_nothing_up(mosquitto, store) -> None:
    """
    A broker that stops reading (frozen) fills the connection's buffers
    until it pushes back: from then on points are only folded into the
    latest states (nothing more is written, what waits stays bounded by
    the topics), and stopping is not held up beyond the grace period.
    """
    source = Source()
    meters = Meters([Meter(id=m, label=f"M{m}") for m in range(1, 51)])
    service = running(parse_broker(mosquitto.url()), meters, source, store)
    subscriber = mosquitto.subscribe("blip/status")
    await waiting(subscriber, latest_is("blip/status", "online"), "online")
    subscriber.close()
    os.kill(mosquitto.process.pid, signal.SIGSTOP)
    try:
        connection = service.link.connection
        sent = []
        send = connection.send
        connection.send = lambda message: (sent.append(message), send(message))
        stamp = pushed_back = 0
        # Publish until the connection pushes back, then as much again.
        while connection.writable or stamp < 2 * pushed_back:
            stamp += 1
            for meter in range(1, 51):
                source.blip(Point(meter, stamp, 1000 + stamp % 1000))
            if stamp % 20 == 0:
                # Let the reactor write.
                await deferLater(reactor, 0, lambda: None)
            if connection.writable:
                pushed_back, sent_before_push_back = stamp, len(sent)
            assert stamp < 100_000, "the connection never pushed back"
        assert not connection.writable
        assert len(sent) <= sent_before_push_back + 2 * 50, "nothing more is handed to a full connection"
        assert 0 < service.publisher.waiting <= 50 * 2
        started = time.monotonic()
        await service.stopService()
        assert time.monotonic() - started < GRACE + 2
    finally:
        os.kill(mosquitto.process.pid, signal.SIGCONT)
