"""
A simulated meter, for the demo and for trying blipserver without an
Arduino. It writes the Arduino's lines into the same protocol object the
serial port feeds, so everything after the wire is the real thing. On a
database without earlier readings of a simulated meter, a year and a bit of
simulated history is written first, so that every view of the page has
something to show.

The simulated household draws a base load that drifts slowly, a fridge
compressor cycling every ~40 minutes, a coffee maker keeping its water hot
at ~2 kW for a minute every ~14 minutes while people are up, and now and
then (mostly by day) a kettle, an oven, a washing machine, a vacuum cleaner
or the lights: about 10 kWh a day. Days follow the machine's local time.
"""

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from blip.common.lifecycle import AfterReady
from blip.meters import Meter
from blip.model import DEFAULT_METER, Point

if TYPE_CHECKING:
    from blip.db.readings import Readings
    from blip.source.arduino import MeterFactory

#: Appliances switched on at random: (name, watts, shortest, longest run in s).
APPLIANCES = [
    ("kettle", 2200.0, 120.0, 240.0),
    ("oven", 1600.0, 1200.0, 3000.0),
    ("washing machine", 450.0, 2400.0, 4200.0),
    ("vacuum cleaner", 900.0, 300.0, 900.0),
    ("lights", 180.0, 1800.0, 7200.0),
]


def awake(now: float) -> bool:
    """
    :return: whether people are up at unix time ``now``: 6 to 22 h, local.
    """
    return 6 <= time.localtime(now).tm_hour < 22


@dataclass
class House:
    """
    The power a simulated household draws over time.

    :param rng: the source of randomness (seed it for repeatable runs).
    :param start: the unix time the simulation starts at.
    """

    rng: random.Random
    start: float
    base: float = 0.0
    _runs: list[tuple[float, float, float]] = field(default_factory=list)
    _next_fridge: float = 0.0
    _next_coffee: float = 0.0
    _next_random: float = 0.0
    _drift_at: float = 0.0

    def __post_init__(self) -> None:
        self.base = self.rng.uniform(150.0, 250.0)
        self._next_fridge = self.start + self.rng.uniform(0, 2400)
        self._next_coffee = self.start + self.rng.uniform(0, 840)
        self._next_random = self.start + self.rng.expovariate(1 / 9000)
        self._drift_at = self.start

    def _plan(self, now: float) -> None:
        rng = self.rng
        while self._next_fridge <= now:
            on = self.rng.uniform(780, 1080)
            self._runs.append((self._next_fridge, self._next_fridge + on, 110.0))
            self._next_fridge += rng.gauss(2400, 120)
        while self._next_coffee <= now:
            if awake(self._next_coffee):
                self._runs.append((self._next_coffee, self._next_coffee + rng.uniform(50, 70), 2000.0))
            self._next_coffee += rng.gauss(840, 30)
        while self._next_random <= now:
            # An appliance every 2.5 hours by day, every 8 hours at night.
            if awake(self._next_random) or rng.random() < 0.3:
                _, watts, shortest, longest = rng.choice(APPLIANCES)
                self._runs.append(
                    (self._next_random, self._next_random + rng.uniform(shortest, longest), watts)
                )
            self._next_random += rng.expovariate(1 / 9000)
        while self._drift_at <= now:
            self.base = min(300.0, max(100.0, self.base + rng.gauss(0, 8)))
            self._drift_at += 60
        self._runs = [run for run in self._runs if run[1] > now]

    def power(self, now: float) -> float:
        """
        :return: the power drawn at unix time ``now``, in W.
        """
        self._plan(now)
        drawn = self.base + sum(w for begin, end, w in self._runs if begin <= now)
        return drawn * self.rng.uniform(0.98, 1.02)


class SimulatedMeter:
    """
    One simulated meter: blinks at the rate its house's power makes it.

    :param meter: the meter's settings (its pulses per kWh and multiplier
        set how often it blinks).
    :param protocol: where its lines go.
    :param clock: schedules the blinks and says the time.
    :param bare: write ``<ms>`` lines (a single-meter Arduino) rather than
        ``<id> <ms>``.
    """

    def __init__(
        self,
        meter: Meter,
        protocol: Protocol,
        clock: IReactorTime,
        bare: bool,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.meter = meter
        self.protocol = protocol
        self.clock = clock
        self.bare = bare
        self.rng = rng or random.Random()
        self.house = House(self.rng, clock.seconds())
        self._call: Optional[IDelayedCall] = None

    def interval(self) -> float:
        """
        :return: ms until the next blink at the power drawn now.
        """
        watts = self.house.power(self.clock.seconds())
        return 3.6e9 * self.meter.multiplier / (self.meter.pulses_per_kwh * watts)

    def start(self) -> None:
        """
        Begin blinking; the first blink comes within a few seconds, as if
        the meter had been blinking before.
        """
        first = min(self.interval(), 3000.0) * self.rng.random()
        self._call = self.clock.callLater(first / 1000, self._blink, self.interval())

    def stop(self) -> None:
        """
        Stop blinking.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _blink(self, ms: float) -> None:
        ms_int = max(1, round(ms))
        if self.bare:
            self.protocol.dataReceived(b"%d\n" % ms_int)
        else:
            self.protocol.dataReceived(b"%d %d\n" % (self.meter.id, ms_int))
        following = self.interval()
        self._call = self.clock.callLater(following / 1000, self._blink, following)


class SimulatorService(Service):
    """
    Runs a simulated meter for each configured meter, all through one
    protocol built by the same factory the serial port uses.

    :param meters: the meters to simulate.
    :param factory: builds the protocol (a :class:`~blip.source.arduino.MeterFactory`).
    :param clock: schedules the blinks.
    """

    log = Logger()

    def __init__(self, meters: list[Meter], factory: "MeterFactory", clock: IReactorTime) -> None:
        self.meters = meters
        self.factory = factory
        self.clock = clock
        self.simulated: list[SimulatedMeter] = []

    def startService(self) -> None:
        super().startService()
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(None)
        # The first line after opening is dropped as partial: end it.
        protocol.dataReceived(b"\n")
        bare = [m.id for m in self.meters] == [DEFAULT_METER]
        self.simulated = [
            SimulatedMeter(meter, protocol, self.clock, bare) for meter in self.meters
        ]
        for simulated in self.simulated:
            simulated.start()
        self.log.info(
            "simulating meters {ids}", ids=", ".join(str(m.id) for m in self.meters)
        )

    def stopService(self) -> None:
        super().stopService()
        for simulated in self.simulated:
            simulated.stop()


#: Days of simulated history written for a meter without earlier readings.
HISTORY_DAYS = 400
#: Points per statement while writing the history.
HISTORY_CHUNK = 5000


def history(meter: Meter, start: float, end: float, rng: random.Random) -> Iterator[list[Point]]:
    """
    The blips a simulated household's meter would have made.

    :param start: unix time of the first, in seconds.
    :param end: unix time before which the last comes.
    :return: the points, oldest first, in chunks of :data:`HISTORY_CHUNK`.
    """
    house = House(rng, start)
    now = start
    chunk: list[Point] = []
    while True:
        ms = 3.6e9 * meter.multiplier / (meter.pulses_per_kwh * house.power(now))
        now += ms / 1000
        if now >= end:
            break
        chunk.append(Point(meter.id, int(now * 1000), max(1, round(ms))))
        if len(chunk) == HISTORY_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class SimulatedHistory(AfterReady):
    """
    Writes :data:`HISTORY_DAYS` of simulated history for each simulated
    meter that has no readings from before the daemon started, once the
    database is ready; a chunk at a time, so that the daemon keeps
    answering meanwhile.

    :param meters: the simulated meters.
    :param store: where the history goes.
    :param ready: returns a Deferred that fires when the database is ready.
    :param clock: says when the daemon started.
    :param days: how many days of history.
    """

    log = Logger()

    def __init__(
        self,
        meters: list[Meter],
        store: "Readings",
        ready: Callable[[], "Deferred[None]"],
        clock: IReactorTime,
        days: float = HISTORY_DAYS,
    ) -> None:
        super().__init__("simulated history", ready, self._fill, self._done, self._started)
        self.meters = meters
        self.store = store
        self.clock = clock
        self.days = days
        #: Fires when the history is written, was not needed, or the
        #: daemon stopped first.
        self.done: Deferred[None] = Deferred()
        self._end = 0.0

    def _started(self) -> None:
        self._end = self.clock.seconds()

    async def _fill(self) -> None:
        end = self._end
        try:
            for meter in self.meters:
                if await self.store.has_readings_before(meter.id, int(end * 1000)):
                    continue
                self.log.info(
                    "writing {days} days of simulated history of meter {meter}",
                    days=self.days, meter=meter.id,
                )
                written = 0
                # The last day first: until the first live blip, /last answers
                # from the database, and its newest point is then recent.
                recent = end - 86400
                for first, last in ((recent, end), (end - self.days * 86400, recent)):
                    for chunk in history(meter, first, last, random.Random(meter.id)):
                        written += await self.store.insert(chunk, announce=False)
                self.log.info(
                    "wrote {count} points of simulated history of meter {meter}",
                    count=written, meter=meter.id,
                )
        finally:
            self._done()

    def _done(self) -> None:
        if not self.done.called:
            self.done.callback(None)
