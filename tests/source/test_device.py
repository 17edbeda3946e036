"""
Tests of the serial device on a real pty: the endpoint and service used in
production, a device unplugged and plugged back behind its symlink, and a
device missing at start.
"""

from typing import Optional

import pytest_twisted
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from blip.counters import Counters
from blip.ingest.stamps import Stamps
from blip.model import Point
from blip.source.arduino import MeterFactory
from blip.source.device import SerialEndpoint, SerialService
from tests.conftest import wait_until


@pytest_twisted.ensureDeferred
async def test_serial_port_on_a_pty(pty_meter) -> None:
    """
    The real SerialPort reads the lines written into a pty, through the
    endpoint and ClientService used in production.
    """
    from twisted.internet import reactor

    points: list[Point] = []
    arrived: list[Deferred[None]] = []

    def receive(point: Point) -> None:
        points.append(point)
        if arrived:
            arrived.pop().callback(None)

    counters = Counters()
    factory = MeterFactory(receive, Stamps(), reactor, counters)
    service = ClientService(
        SerialEndpoint(reactor, pty_meter.path, 9600, counters),
        factory,
        retryPolicy=backoffPolicy(0.1, 1.0),
    )
    service.startService()
    try:
        await service.whenConnected().addTimeout(10, reactor)
        done: Deferred[None] = Deferred()
        arrived.append(done)
        pty_meter.write(b"tail\n2 1500\r\n")
        await done.addTimeout(10, reactor)
        assert [(p.meter, p.ms) for p in points] == [(2, 1500)]
        assert counters.serial_opens == 1
    finally:
        await service.stopService()


def test_endpoint_fails_for_a_missing_device(tmp_path, log_events) -> None:
    """
    Opening a device that does not exist fails the connection attempt
    (ClientService then retries) and is logged once however often it is
    retried.
    """
    from twisted.internet import reactor

    counters = Counters()
    endpoint = SerialEndpoint(reactor, str(tmp_path / "nothing"), 9600, counters)
    factory = MeterFactory(lambda p: None, Stamps(), Clock(), counters)
    failures: list[Optional[BaseException]] = []
    for _ in range(3):
        endpoint.connect(factory).addErrback(lambda f: failures.append(f.value))
    assert len(failures) == 3
    assert counters.serial_failures == 3
    assert len([e for e in log_events if "cannot open" in e["log_format"]]) == 1


class Recorder:
    """
    Counts, points and source events of a factory on the real reactor.
    """

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.points: list[Point] = []
        self.events: list[str] = []
        self.counters = Counters()
        self.factory = MeterFactory(
            self.points.append, Stamps(), reactor, self.counters,
            opened=lambda: self.events.append("opened"),
            lost=lambda: self.events.append("lost"),
        )

    def service(self, path: str) -> SerialService:
        """:return: the serial service for the device at ``path``."""
        from twisted.internet import reactor

        endpoint = SerialEndpoint(reactor, path, 9600, self.counters)
        return SerialService(endpoint, self.factory, reactor)


def warnings(log_events) -> list[str]:
    """:return: the formats of the warnings and worse logged."""
    return [e["log_format"] for e in log_events if e["log_level"] >= LogLevel.warn]


@pytest_twisted.ensureDeferred
async def test_unplugged_device_is_logged_once_and_reopened(meter_link, log_events) -> None:
    """
    A device that vanishes is logged once (not once per attempt to reopen
    it), reopened when it is back behind its symlink, and the first line
    after reopening is dropped; lines it sent before the reopening are
    read. Stopping the service is not a loss.
    """
    r = Recorder()
    service = r.service(str(meter_link.path))
    service.startService()
    try:
        meter_link.write(b"tail\n100\n")
        await wait_until(lambda: [p.ms for p in r.points] == [100])
        meter_link.unplug()
        await wait_until(lambda: r.counters.serial_failures >= 1)
        meter_link.plug()
        meter_link.write(b"partial\n200\n300\n")
        await wait_until(lambda: [p.ms for p in r.points] == [100, 200, 300], 15)
    finally:
        await service.stopService()
    assert r.counters.serial_opens == 2 and r.counters.serial_lost == 1
    assert r.events == ["opened", "lost", "opened"]
    assert warnings(log_events) == [
        "serial source lost: {why}; reopening it as soon as it is back"
    ]


@pytest_twisted.ensureDeferred
async def test_a_device_missing_at_start_is_waited_for(meter_link, log_events) -> None:
    """
    A device that does not exist when the daemon starts is logged once and
    opened as soon as it appears.
    """
    meter_link.unplug()
    r = Recorder()
    service = r.service(str(meter_link.path))
    service.startService()
    try:
        await wait_until(lambda: r.counters.serial_failures >= 2)
        meter_link.plug()
        meter_link.write(b"\n42\n")
        await wait_until(lambda: [p.ms for p in r.points] == [42], 15)
    finally:
        await service.stopService()
    assert warnings(log_events) == [
        "cannot open serial device {device}: {why}; waiting for it"
    ]
    assert r.events == ["opened"]


@pytest_twisted.ensureDeferred
async def test_the_first_opening_reads_the_device_held_before(meter_link) -> None:
    """
    A device opened by ``hold()`` (as root, before twistd gives up its
    privileges) is what the first opening reads, with the lines it sent
    before, even if its path can no longer be opened.
    """
    from twisted.internet import reactor

    r = Recorder()
    endpoint = SerialEndpoint(reactor, str(meter_link.path), 9600, r.counters)
    endpoint.hold()
    meter_link.path.unlink()
    meter_link.write(b"tail\n7\n")
    protocol = await endpoint.connect(r.factory)
    try:
        await wait_until(lambda: [p.ms for p in r.points] == [7])
        assert r.counters.serial_opens == 1 and r.events == ["opened"]
    finally:
        r.factory.stopping = True
        protocol.transport.loseConnection()
