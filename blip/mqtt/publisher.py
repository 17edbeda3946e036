"""
The publisher: the meters' points folded into MQTT messages, the power of
each meter (the mean over the last ``--mqtt-interval``, at most once per
interval) and its energy (a counter of every blip stored, that survives
restarts).

Only this node's own points are published: power from the blips its source
reads, energy from the points its ingest commits (see
:class:`blip.ingest.writer.Observer`), never from points announced by the
database, which any login of it could forge.

A broker outage never slows ingest: only the latest message of each topic
waits for the broker, so what waits is bounded by the number of meters;
every (re)connection gets availability, discovery and the latest states
first.
"""

import typing
from collections import deque
from typing import Iterable, Optional, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from blip.meters import Meter, Meters
from blip.model import Point
from blip.mqtt.broker import Broker, Message, discovery_messages

#: Stamps of blips stored before the stored count is known, kept per meter.
EARLY_MAX = 100_000


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
    and its count of blips stored, once the count in the database is known,
    with the stamp of the newest blip counted.
    """

    def __init__(self) -> None:
        self.blips = 0
        self.sum_ms = 0
        self.sent_at = float("-inf")
        self.timer: Optional[IDelayedCall] = None
        self.count: Optional[int] = None
        self.newest: Optional[int] = None
        self.early: deque[int] = deque(maxlen=EARLY_MAX)


class Connection(typing.Protocol):
    """
    What the publisher needs of a broker connection (see
    :class:`~blip.mqtt.connection.MqttProtocol`).
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
        Take a point this node's source read, for the power (an ingest
        observer: never raises, never blocks).
        """
        try:
            self._receive(point)
        except Exception:
            self.log.failure("MQTT publisher failed on {point}", point=point)

    def stored(self, points: Sequence[Point]) -> None:
        """
        Count the points a write of this node committed, for the energy (an
        ingest observer: never raises, never blocks). A point is counted
        once, whatever is written again: stamps of a meter are stored in
        increasing order, so only those after the newest counted are new.
        """
        try:
            self._stored(points)
        except Exception:
            self.log.failure("MQTT publisher failed on {count} stored points", count=len(points))

    def _tally(self, meter_id: int) -> _Tally:
        tally = self._tallies.get(meter_id)
        if tally is None:
            tally = self._tallies[meter_id] = _Tally()
            self._discover(self.meters.get(meter_id))
        return tally

    def _stored(self, points: Sequence[Point]) -> None:
        counted: dict[int, None] = {}
        for point in points:
            tally = self._tally(point.meter)
            if tally.count is None:
                tally.early.append(point.stamp)
            elif tally.newest is None or point.stamp > tally.newest:
                tally.count += 1
                tally.newest = point.stamp
                counted[point.meter] = None
        for meter_id in counted:
            # Along with the next power message if one is due, else now.
            if self._tallies[meter_id].timer is None:
                self._publish_energy(meter_id)
        self._flush()

    def _receive(self, point: Point) -> None:
        tally = self._tally(point.meter)
        tally.blips += 1
        tally.sum_ms += point.ms
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
            blip)``; blips this node stored with a later stamp are counted
            on top.
        """
        stored = {meter: (events, last) for meter, events, last in totals}
        for meter in self.meters:
            stored.setdefault(meter.id, (0, None))
        for meter_id, (events, last) in sorted(stored.items()):
            tally = self._tally(meter_id)
            later = [stamp for stamp in tally.early if last is None or stamp > last]
            tally.count = int(events) + len(later)
            tally.newest = later[-1] if later else last
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
