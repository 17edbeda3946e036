"""
A simulated meter, for the demo and for trying blipserver without an
Arduino. It writes the Arduino's lines into the same protocol object the
serial port feeds, so everything after the wire is the real thing.

The simulated household draws a base load that drifts slowly, a fridge
compressor cycling every ~40 minutes, a coffee maker keeping its water hot
at ~2 kW for a minute every ~14 minutes, and now and then a kettle, an oven,
a washing machine or a vacuum cleaner.
"""

import random
from dataclasses import dataclass, field
from typing import Optional

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from blip.meters import Meter
from blip.model import DEFAULT_METER

#: Appliances switched on at random: (name, watts, shortest, longest run in s).
APPLIANCES = [
    ("kettle", 2200.0, 120.0, 240.0),
    ("oven", 1600.0, 1200.0, 3000.0),
    ("washing machine", 450.0, 2400.0, 4200.0),
    ("vacuum cleaner", 900.0, 300.0, 900.0),
    ("lights", 180.0, 1800.0, 7200.0),
]


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
        self.base = self.rng.uniform(200.0, 300.0)
        self._next_fridge = self.start + self.rng.uniform(0, 2400)
        self._next_coffee = self.start + self.rng.uniform(0, 840)
        self._next_random = self.start + self.rng.expovariate(1 / 900)
        self._drift_at = self.start

    def _plan(self, now: float) -> None:
        rng = self.rng
        while self._next_fridge <= now:
            on = self.rng.uniform(780, 1080)
            self._runs.append((self._next_fridge, self._next_fridge + on, 110.0))
            self._next_fridge += rng.gauss(2400, 120)
        while self._next_coffee <= now:
            self._runs.append((self._next_coffee, self._next_coffee + rng.uniform(50, 70), 2000.0))
            self._next_coffee += rng.gauss(840, 30)
        while self._next_random <= now:
            _, watts, shortest, longest = rng.choice(APPLIANCES)
            self._runs.append((self._next_random, self._next_random + rng.uniform(shortest, longest), watts))
            self._next_random += rng.expovariate(1 / 900)
        while self._drift_at <= now:
            self.base = min(400.0, max(120.0, self.base + rng.gauss(0, 8)))
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
    :param factory: builds the protocol (a :class:`~blip.arduino.MeterFactory`).
    :param clock: schedules the blinks.
    """

    log = Logger()

    def __init__(self, meters: list[Meter], factory: Factory, clock: IReactorTime) -> None:
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
