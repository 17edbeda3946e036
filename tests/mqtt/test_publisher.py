"""
Tests of the publisher's arithmetic on a clock: power as the mean over
each interval, energy as the stored count plus the blips this node stored
since, and only the latest message of each topic waiting for a broker that
is away or slow.
"""

from twisted.internet.task import Clock

from blip.meters import Meter, Meters
from blip.model import Point
from blip.mqtt.broker import Message, parse_broker
from blip.mqtt.publisher import Publisher, kwh_text

HOUSE = Meter(id=1, label="House", pulses_per_kwh=600.0, multiplier=4.0)


class Recorder:
    """
    A broker connection that records what the publisher hands it (the
    publisher's side of :class:`blip.mqtt.connection.MqttProtocol`, in memory).
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


def test_energy_counts_the_stored_blips() -> None:
    """
    The energy counter is the stored count plus the blips this node stored
    with a stamp after the newest one counted; blips stored before the
    stored count is known are neither lost nor counted twice, nor are
    points written again (a spool replayed); blips that arrived but are not
    stored yet do not count; it only grows.
    """
    publisher_, clock = publisher(interval=0)
    connection = Recorder()
    publisher_.attach(connection)
    topic = "home/blip/1/energy"
    publisher_.stored([Point(1, stamp, 100) for stamp in (100, 200, 300)])
    assert connection.payloads(topic) == [], "unknown until the stored count is"
    # The database holds 1000 blips, the newest at 200: 300 was not in it.
    publisher_.set_totals([(1, 1000, 200), (7, 5, 50)])
    assert connection.payloads(topic) == [kwh_text(1001 * HOUSE.kwh_per_blip)]
    assert connection.payloads("home/blip/7/energy") == [kwh_text(5 * 0.001)]
    publisher_.receive(Point(1, 400, 100))
    assert publisher_.energy(1) == 1001 * HOUSE.kwh_per_blip
    publisher_.stored([Point(1, 300, 100), Point(1, 400, 100)])
    publisher_.stored([Point(1, 400, 100)])
    assert publisher_.energy(1) == 1002 * HOUSE.kwh_per_blip
    assert connection.payloads(topic)[-1] == kwh_text(1002 * HOUSE.kwh_per_blip)
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
        publisher_.stored([Point(1, stamp, 1000)])
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
        publisher_.stored([Point(1, stamp, ms)])
    assert len(connection.sent) == sent
    connection.writable = True
    publisher_.writable()
    assert [m.payload for m in connection.sent[sent:]] == [
        f"{HOUSE.watts(300):.1f}", kwh_text(3 * HOUSE.kwh_per_blip),
    ]


def test_energy_after_a_write_waits_for_the_interval() -> None:
    """
    A write's energy goes out at once when no power message is due, and
    otherwise with the next one, so that a meter blinking fast sends a few
    messages per interval, not one per write.
    """
    publisher_, clock = publisher(interval=5.0)
    publisher_.set_totals([(1, 0, None)])
    connection = Recorder()
    publisher_.attach(connection)
    topic = "home/blip/1/energy"
    publisher_.receive(Point(1, 1, 1000))
    publisher_.stored([Point(1, 1, 1000)])
    assert connection.payloads(topic)[-1] == kwh_text(HOUSE.kwh_per_blip)
    sent = len(connection.payloads(topic))
    for stamp in range(2, 50):
        clock.advance(0.05)
        publisher_.receive(Point(1, stamp, 1000))
        publisher_.stored([Point(1, stamp, 1000)])
    assert len(connection.payloads(topic)) == sent
    clock.advance(5)
    assert connection.payloads(topic)[-1] == kwh_text(49 * HOUSE.kwh_per_blip)
    assert len(connection.payloads(topic)) == sent + 1


def test_a_failure_never_reaches_ingest(log_events) -> None:
    """
    The publisher is an ingest observer: whatever goes wrong inside it is
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
