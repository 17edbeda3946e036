"""
Tests of MQTT publishing: broker URLs, the publisher's arithmetic on a
clock, paho over a Twisted connection to a real Mosquitto (reconnection,
refusal, TLS, a stalled broker), and ``twistd -n blip`` fed through a pty
publishing to a real broker across its own restart and the broker's.
"""

import json
import os
import signal
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread

from blip.live.hub import Hub
from blip.meters import Meter, Meters
from blip.model import Point
from blip.mqtt.publish import (
    GRACE,
    Broker,
    BrokerError,
    Link,
    Message,
    MqttService,
    Publisher,
    broker_endpoint,
    discovery_messages,
    kwh_text,
    parse_broker,
)
from tests.conftest import TIMEOUT

HOUSE = Meter(id=1, label="House", pulses_per_kwh=600.0, multiplier=4.0)


class Recorder:
    """
    A broker connection that records what the publisher hands it (the
    publisher's side of :class:`blip.mqtt.publish.MqttProtocol`, in memory).
    """

    def __init__(self) -> None:
        self.writable = True
        self.sent: list[Message] = []

    def send(self, message: Message) -> None:
        """Record ``message``."""
        self.sent.append(message)

    def payloads(self, topic: str) -> list[str]:
        """:return: the payloads sent on ``topic``, in order."""
        return [m.payload for m in self.sent if m.topic == topic]


def publisher(interval: float = 5.0, meters: Meters = Meters([HOUSE])) -> tuple[Publisher, Clock]:
    """:return: a publisher to the prefix ``home/blip`` on a fake clock, and the clock."""
    clock = Clock()
    clock.advance(1000)
    return Publisher(parse_broker("mqtt://broker/home/blip"), meters, clock, interval), clock


# --- Broker URLs ---


def test_broker_urls() -> None:
    """
    Broker URLs give host, port (1883 or 8883 by default), TLS, user and
    percent-decoded password, topic prefix (``blip`` by default) and
    discovery prefix.
    """
    broker = parse_broker("mqtt://broker.lan")
    assert broker == Broker("broker.lan", 1883)
    assert (broker.prefix, broker.discovery, broker.availability) == ("blip", "homeassistant", "blip/status")
    broker = parse_broker("mqtts://me:p%40ss%2Fw@[::1]:9999/home/power/?discovery=ha")
    assert (broker.host, broker.port, broker.tls) == ("::1", 9999, True)
    assert (broker.username, broker.password) == ("me", "p@ss/w")
    assert (broker.prefix, broker.node, broker.discovery) == ("home/power", "home_power", "ha")
    assert broker.state(3, "power") == "home/power/3/power"
    assert broker.config(3, "energy") == "ha/sensor/home_power/meter3_energy/config"
    assert parse_broker("mqtts://h").port == 8883


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://u:hunter2@host", "mqtt:// or mqtts://"),
        ("mqtt://u:hunter2@:1883", "no host"),
        ("mqtt://u:hunter2@host:99999", "not a broker URL"),
        ("mqtt://u:hunter2@host:port", "not a broker URL"),
        ("mqtt://u:hunter2@host/a/+/b", "not a valid topic"),
        ("mqtt://u:hunter2@host/a#b", "fragment"),
        ("mqtt://u:hunter2@host?qos=2", "unknown URL option 'qos'"),
        ("mqtt://u:hunter2@host?discovery=a//b", "not a valid topic"),
    ],
)
def test_bad_broker_urls(url: str, why: str) -> None:
    """
    A bad broker URL is refused with a message saying why that never
    repeats the password; a broker never shows its password.
    """
    with pytest.raises(BrokerError) as caught:
        parse_broker(url)
    assert why in str(caught.value)
    assert "hunter2" not in str(caught.value)
    broker = parse_broker("mqtt://u:hunter2@host")
    assert "hunter2" not in str(broker) and "hunter2" not in repr(broker)
    assert str(broker) == "mqtt://u@host:1883/blip"


# --- The publisher, on a clock ---


def test_discovery_messages() -> None:
    """
    A meter has two retained discovery messages, a power sensor (W,
    measurement) and an energy sensor (kWh, total_increasing), under one
    device named from its label, with the availability topic.
    """
    power, energy = discovery_messages(parse_broker("mqtt://b/home/blip"), HOUSE)
    assert power.topic == "homeassistant/sensor/home_blip/meter1_power/config"
    assert energy.topic == "homeassistant/sensor/home_blip/meter1_energy/config"
    assert power.retain and energy.retain
    power_config, energy_config = json.loads(power.payload), json.loads(energy.payload)
    assert {k: power_config[k] for k in ("device_class", "state_class", "unit_of_measurement")} == {
        "device_class": "power", "state_class": "measurement", "unit_of_measurement": "W",
    }
    assert {k: energy_config[k] for k in ("device_class", "state_class", "unit_of_measurement")} == {
        "device_class": "energy", "state_class": "total_increasing", "unit_of_measurement": "kWh",
    }
    assert power_config["state_topic"] == "home/blip/1/power"
    assert energy_config["state_topic"] == "home/blip/1/energy"
    assert power_config["device"] == energy_config["device"]
    assert power_config["device"]["name"] == "House"
    assert power_config["device"]["identifiers"] == ["home_blip_meter1"]
    assert power_config["unique_id"] != energy_config["unique_id"]
    for config in (power_config, energy_config):
        assert config["availability_topic"] == "home/blip/status"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")


def test_power_is_the_mean_over_each_interval() -> None:
    """
    The first blip after a quiet interval is published at once; later ones
    are folded into one message per interval holding the mean power over
    their spans (the rollups' formula, through Meter.watts).
    """
    publisher_, clock = publisher(interval=5.0)
    connection = Recorder()
    publisher_.attach(connection)
    topic = "home/blip/1/power"
    publisher_.receive(Point(1, 1, 1000))
    assert connection.payloads(topic) == [f"{HOUSE.watts(1000):.1f}"]
    for ms in (500, 1000, 1500):
        clock.advance(1)
        publisher_.receive(Point(1, 2 + ms, ms))
    assert len(connection.payloads(topic)) == 1
    clock.advance(1.999)
    assert len(connection.payloads(topic)) == 1
    clock.advance(0.001)
    mean = 3.6e9 * 4 * 3 / (600 * 3000)
    assert connection.payloads(topic) == [f"{HOUSE.watts(1000):.1f}", f"{mean:.1f}"]
    clock.advance(60)
    assert len(connection.payloads(topic)) == 2, "no blip, no message"
    publisher_.receive(Point(1, 9000, 2000))
    assert connection.payloads(topic)[-1] == f"{HOUSE.watts(2000):.1f}"


def test_every_blip_with_interval_zero() -> None:
    """
    With an interval of 0, every blip is published.
    """
    publisher_, clock = publisher(interval=0)
    connection = Recorder()
    publisher_.attach(connection)
    for stamp in range(1, 6):
        publisher_.receive(Point(1, stamp, 100 * stamp))
    assert connection.payloads("home/blip/1/power") == [f"{HOUSE.watts(100 * s):.1f}" for s in range(1, 6)]


def test_energy_counts_stored_and_unstored_blips() -> None:
    """
    The energy counter is the stored count plus the blips seen with a stamp
    after the newest stored one; blips seen before the stored count is
    known are neither lost nor counted twice; it only grows.
    """
    publisher_, clock = publisher(interval=0)
    connection = Recorder()
    publisher_.attach(connection)
    topic = "home/blip/1/energy"
    for stamp in (100, 200, 300):
        publisher_.receive(Point(1, stamp, 100))
    assert connection.payloads(topic) == [], "unknown until the stored count is"
    # The database holds 1000 blips, the newest at 200: 300 is not stored.
    publisher_.set_totals([(1, 1000, 200), (7, 5, 50)])
    assert connection.payloads(topic) == [kwh_text(1001 * HOUSE.kwh_per_blip)]
    assert connection.payloads("home/blip/7/energy") == [kwh_text(5 * 0.001)]
    publisher_.receive(Point(1, 400, 100))
    assert publisher_.energy(1) == 1002 * HOUSE.kwh_per_blip
    values = [float(p) for p in connection.payloads(topic)]
    assert values == sorted(values)
    discovered = {m.topic for m in connection.sent if m.topic.endswith("/config")}
    assert "homeassistant/sensor/home_blip/meter7_energy/config" in discovered


def test_outage_keeps_only_the_latest_messages() -> None:
    """
    While the broker is away, only the latest message of each topic waits
    (a bounded queue whatever the number of blips); the next connection
    gets availability, discovery and the latest power and energy.
    """
    publisher_, clock = publisher(interval=5.0)
    publisher_.set_totals([(1, 10, 0)])
    for stamp in range(1, 20001):
        publisher_.receive(Point(1, stamp, 1000))
        clock.advance(0.01)
    clock.advance(5)
    assert publisher_.waiting <= 6
    connection = Recorder()
    publisher_.attach(connection)
    topics = [m.topic for m in connection.sent]
    assert topics[0] == "home/blip/status" and connection.sent[0].payload == "online"
    assert topics[1:3] == [
        "homeassistant/sensor/home_blip/meter1_power/config",
        "homeassistant/sensor/home_blip/meter1_energy/config",
    ]
    assert connection.payloads("home/blip/1/energy") == [kwh_text(20010 * HOUSE.kwh_per_blip)]
    assert connection.payloads("home/blip/1/power") == [f"{HOUSE.watts(1000):.1f}"]
    assert len(connection.sent) == len(set(topics))


def test_a_slow_connection_gets_only_the_latest_states() -> None:
    """
    While the connection takes no more (its buffer is full), newer states
    replace the waiting ones; when it takes more again, it gets the latest.
    """
    publisher_, clock = publisher(interval=0)
    publisher_.set_totals([(1, 0, None)])
    connection = Recorder()
    publisher_.attach(connection)
    connection.writable = False
    sent = len(connection.sent)
    for stamp, ms in enumerate((100, 200, 300), start=1):
        publisher_.receive(Point(1, stamp, ms))
    assert len(connection.sent) == sent
    connection.writable = True
    publisher_.writable()
    assert [m.payload for m in connection.sent[sent:]] == [
        f"{HOUSE.watts(300):.1f}", kwh_text(3 * HOUSE.kwh_per_blip),
    ]


def test_a_failure_never_reaches_the_hub(log_events) -> None:
    """
    The publisher is a hub listener: whatever goes wrong inside it is
    logged, never raised.
    """
    publisher_, clock = publisher(interval=0)

    class Broken:
        writable = False

        def send(self, message: Message) -> None:
            raise RuntimeError("broken connection")

    broken = Broken()
    publisher_.attach(broken)
    broken.writable = True
    publisher_.receive(Point(1, 1, 1000))
    assert [e["log_failure"].value for e in log_events if "log_failure" in e][0].args == ("broken connection",)


# --- paho over Twisted, against a real Mosquitto ---


def running(broker: Broker, meters: Meters, hub: Hub, store, interval: float = 0.0) -> MqttService:
    """
    :return: a started MQTT service on the real reactor, counting the
        blips of ``store``.
    """
    publisher_ = Publisher(broker, meters, reactor, interval)
    link = Link(broker, publisher_, broker_endpoint(reactor, broker), reactor)
    service = MqttService(publisher_, link, hub, store, lambda: Deferred.fromCoroutine(_nothing()))
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
    hub = Hub()
    broker = parse_broker(mosquitto.url())
    subscriber = mosquitto.subscribe()
    await store.insert([Point(1, stamp, 1000) for stamp in range(1, 601)])
    service = running(broker, Meters([HOUSE]), hub, store)
    try:
        await waiting(subscriber, latest_is("blip/status", "online"), "online")
        await waiting(subscriber, latest_is("blip/1/energy", "4"), "energy of 600 blips")
        hub.publish(Point(1, 610, 1500))
        await waiting(subscriber, latest_is("blip/1/power", f"{HOUSE.watts(1500):.1f}"), "power")

        await deferToThread(mosquitto.stop)
        for stamp in range(611, 911):
            hub.publish(Point(1, stamp, 1000))
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
    service = running(parse_broker(mosquitto.url()), Meters([HOUSE]), Hub(), store)
    await waiting(subscriber, latest_is("blip/status", "online"), "online")
    await service.stopService()
    await waiting(subscriber, latest_is("blip/status", "offline"), "offline at stop")

    service = running(parse_broker(mosquitto.url()), Meters([HOUSE]), Hub(), store)
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
    service = running(broker, Meters([HOUSE]), Hub(), store)
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
    hub = Hub()
    service = running(parse_broker(mosquitto.url(tls=True)), Meters([HOUSE]), hub, store)
    try:
        await waiting(subscriber, latest_is("blip/status", "online"), "online over TLS")
        hub.publish(Point(1, 1, 900))
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
    hub = Hub()
    meters = Meters([Meter(id=m, label=f"M{m}") for m in range(1, 51)])
    service = running(parse_broker(mosquitto.url()), meters, hub, store)
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
                hub.publish(Point(meter, stamp, 1000 + stamp % 1000))
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


# --- The daemon, end to end ---


def hourly_events(daemon, meter: int) -> int:
    """:return: the meter's blips, summed from the legacy /hourly route."""
    from tests.test_service import get

    status, body = get(daemon, f"/hourly/{meter}/0/{int(time.time() * 1000) + 3_600_000}")
    assert status == 200
    return sum(row[1] for row in json.loads(body))


def test_daemon_publishes_what_it_stores(start_daemon, pty_meter, database, mosquitto, tmp_path) -> None:
    """
    ``twistd -n blip`` fed through a pty publishes discovery for each meter
    (named from the meters file), power as the meters' blips say and
    energy matching the blips stored (as the API counts them); the energy
    counter continues across a daemon restart and across a broker restart
    during which ingest goes on; the password is never logged.
    """
    from tests.conftest import eventually

    meters = tmp_path / "meters.toml"
    meters.write_text(
        '[[meter]]\nid = 1\nlabel = "House"\npulses_per_kwh = 600\nmultiplier = 4\n'
        '[[meter]]\nid = 2\nlabel = "Heat pump"\n'
    )
    house, heat_pump = Meters.from_file(meters).get(1), Meters.from_file(meters).get(2)
    args = ["--serial", pty_meter.path, "--db", database.dsn, "--meters", str(meters),
            "--mqtt", mosquitto.url(prefix="home/blip"), "--mqtt-interval", "0.3"]
    subscriber = mosquitto.subscribe()
    daemon = start_daemon(*args)
    daemon.wait_for("publishing to MQTT broker mqtt://meter@127.0.0.1")
    configs = subscriber.wait_for(
        lambda ms: {m.topic: json.loads(m.payload) for m in ms if m.topic.endswith("/config")}
        if sum(m.topic.endswith("/config") for m in ms) >= 4 else None,
        what="four discovery messages",
    )
    devices = {c["device"]["name"]: c["device"]["identifiers"] for c in configs.values()}
    assert devices == {"House": ["home_blip_meter1"], "Heat pump": ["home_blip_meter2"]}
    energy_config = configs["homeassistant/sensor/home_blip/meter2_energy/config"]
    assert (energy_config["device_class"], energy_config["state_class"]) == ("energy", "total_increasing")
    assert energy_config["state_topic"] == "home/blip/2/energy"
    assert subscriber.wait_latest("home/blip/status") == "online"
    assert subscriber.wait_latest("home/blip/1/energy") == "0"
    daemon.wait_for("reading serial device")

    def blips(meter: int, ms: int, count: int) -> None:
        prefix = b"" if meter == 1 else b"%d " % meter
        pty_meter.write((prefix + b"%d\n" % ms) * count)

    def stored_energy(meter) -> str:
        """The energy the database says: every stored blip, through the API."""
        return kwh_text(hourly_events(daemon, meter.id) * meter.kwh_per_blip)

    pty_meter.write(b"first line, dropped\n")
    seen = len(subscriber.messages)
    blips(1, 1500, 20)
    blips(2, 400, 5)
    assert subscriber.wait_latest("home/blip/1/power", since=seen) == f"{house.watts(1500):.1f}"
    assert subscriber.wait_latest("home/blip/2/power", since=seen) == f"{heat_pump.watts(400):.1f}"
    assert eventually(lambda: hourly_events(daemon, 1) == 20 and hourly_events(daemon, 2) == 5)
    subscriber.wait_latest("home/blip/1/energy", lambda p: p == stored_energy(house), since=seen)
    subscriber.wait_latest("home/blip/2/energy", lambda p: p == stored_energy(heat_pump), since=seen)
    power_messages = [m for m in subscriber.messages[seen:] if m.topic == "home/blip/1/power"]
    assert len(power_messages) < 10, "rate-limited to one message per interval"

    # A restart: the counter starts from the stored count, then goes on.
    before = float(stored_energy(house))
    assert daemon.stop() == 0
    assert subscriber.wait_latest("home/blip/status") == "offline"
    seen = len(subscriber.messages)
    daemon = start_daemon(*args)
    assert subscriber.wait_latest("home/blip/1/energy", since=seen) == kwh_text(before)
    daemon.wait_for("reading serial device")
    pty_meter.write(b"partial\n")
    blips(1, 750, 10)
    assert subscriber.wait_latest("home/blip/1/power", since=seen) == f"{house.watts(750):.1f}"
    assert eventually(lambda: hourly_events(daemon, 1) == 30)
    subscriber.wait_latest("home/blip/1/energy", lambda p: p == stored_energy(house), since=seen)
    assert float(stored_energy(house)) > before

    # The broker goes away mid-stream: ingest goes on; when it is back it
    # gets discovery, availability and the energy of every blip stored.
    subscriber.close()
    mosquitto.stop()
    blips(1, 1200, 15)
    assert eventually(lambda: hourly_events(daemon, 1) == 45)
    mosquitto.start()
    subscriber = mosquitto.subscribe()
    subscriber.wait_latest("home/blip/1/energy", lambda p: p == stored_energy(house))
    assert subscriber.wait_latest("home/blip/status") == "online"
    assert subscriber.wait_latest("home/blip/1/power") == f"{house.watts(1200):.1f}"
    subscriber.wait_for(lambda ms: sum(m.topic.endswith("/config") for m in ms) == 4)
    assert daemon.stop() == 0
    subscriber.close()
    assert not any(mosquitto.password in line for line in daemon.output)
