"""
Tests of MQTT publishing as the daemon runs it: the stored counts loaded
once the database is ready, ``twistd -n blip`` fed through a pty
publishing to a real broker across its own restart and the broker's, and
notifications forged by a read-only login, which the broker never sees.
"""

import json
import time
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from zope.interface import implementer

from blip.db.pool import DatabaseUnavailable
from blip.meters import Meter, Meters
from blip.model import Point
from blip.mqtt.broker import parse_broker
from blip.mqtt.connection import Link
from blip.mqtt.publisher import Publisher, kwh_text
from blip.mqtt.service import MqttService
from tests.mqtt.test_connection import Source

HOUSE = Meter(id=1, label="House", pulses_per_kwh=600.0, multiplier=4.0)


@implementer(IStreamClientEndpoint)
class Unreachable:
    """A broker that never answers."""

    def connect(self, factory) -> Deferred:
        """:return: an attempt that never ends (until cancelled)."""
        return Deferred()


class AwayStore:
    """
    A database that is away for the first ``away`` reads of the stored
    counts, then says meter 1 has 10 blips.
    """

    def __init__(self, away: int) -> None:
        self.away = away
        self.reads = 0

    async def blip_totals(self) -> list[tuple[int, int, Optional[int]]]:
        """:return: the stored counts, once the database is back."""
        self.reads += 1
        if self.reads <= self.away:
            raise DatabaseUnavailable("no connection")
        return [(1, 10, 5)]


def mqtt(store: AwayStore, ready: Deferred) -> tuple[MqttService, Publisher, Source, Clock]:
    """:return: an MQTT service on a clock, its publisher, ingest and clock."""
    clock = Clock()
    broker = parse_broker("mqtt://broker")
    publisher = Publisher(broker, Meters([HOUSE]), clock, 0)
    link = Link(broker, publisher, Unreachable(), clock)
    source = Source()
    return MqttService(publisher, link, source, store, lambda: ready), publisher, source, clock


def test_stored_counts_are_loaded_once_the_database_is_ready(log_events) -> None:
    """
    Points are taken from the start; the stored counts are read only once
    the database is ready, retried with backoff while it is away (said
    once), and then count with the points seen before.
    """
    store = AwayStore(away=2)
    ready: Deferred[None] = Deferred()
    service, publisher, source, clock = mqtt(store, ready)
    service.startService()
    source.blip(Point(1, 100, 1000))
    assert store.reads == 0 and publisher.energy(1) is None
    ready.callback(None)
    assert store.reads == 1
    clock.advance(60)
    clock.advance(60)
    assert store.reads == 3
    assert publisher.energy(1) == 11 * HOUSE.kwh_per_blip
    retries = [e for e in log_events if "retrying" in e.get("log_format", "")]
    assert [e["what"] for e in retries] == ["read the stored blip counts for MQTT"]
    stopped = service.stopService()
    clock.advance(60)
    assert stopped.called


def test_stopped_before_the_database_is_ready_it_never_reads() -> None:
    """
    A stop before the database is ready ends the wait: the stored counts
    are never read, and points are no longer taken.
    """
    store = AwayStore(away=0)
    ready: Deferred[None] = Deferred()
    service, publisher, source, clock = mqtt(store, ready)
    service.startService()
    stopped = service.stopService()
    clock.advance(60)
    assert stopped.called
    waiting = publisher.waiting
    source.blip(Point(1, 100, 1000))
    assert publisher.waiting == waiting
    assert store.reads == 0

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


def test_forged_notifications_change_nothing_the_broker_sees(
    start_daemon, pty_meter, database, mosquitto, forger
) -> None:
    """
    A node that ingests, listens and publishes to MQTT gets notifications
    forged by a read-only login for its own meter, stamped near now (which
    its live clients may take for points): Home Assistant's energy counter
    stays the count of the blips stored, and no forged power is published.
    """
    from tests.conftest import eventually
    from tests.test_service import metric

    args = ["--serial", pty_meter.path, "--db", database.dsn,
            "--mqtt", mosquitto.url(), "--mqtt-interval", "0"]
    subscriber = mosquitto.subscribe()
    daemon = start_daemon(*args)
    daemon.wait_for("reading serial device")
    daemon.wait_for("receiving live points from the database")
    house = Meters().get(1)
    pty_meter.write(b"first line, dropped\n" + b"1500\n" * 10)
    assert eventually(lambda: hourly_events(daemon, 1) == 10)
    subscriber.wait_latest("blip/1/energy", lambda p: p == kwh_text(10 * house.kwh_per_blip))
    now = int(time.time() * 1000)
    forger.notify(*[f"1:{now + i * 100},1" for i in range(1, 51)], "77:%d,1" % now)
    assert eventually(lambda: metric(daemon, "blip_notified_total") >= 10 + 51)
    pty_meter.write(b"1500\n" * 5)
    assert eventually(lambda: hourly_events(daemon, 1) == 15)
    subscriber.wait_latest("blip/1/energy", lambda p: p == kwh_text(15 * house.kwh_per_blip))
    energies = [float(m.payload) for m in subscriber.messages if m.topic == "blip/1/energy"]
    assert max(energies) == 15 * house.kwh_per_blip
    powers = {m.payload for m in subscriber.messages if m.topic == "blip/1/power"}
    assert powers == {f"{house.watts(1500):.1f}"}
    assert not any(m.topic.startswith("blip/77/") for m in subscriber.messages)
    assert metric(daemon, "blip_notified_refused_total") == 1
    assert daemon.stop() == 0
    subscriber.close()
