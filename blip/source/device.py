"""
The serial device the Arduino writes to: opened as a client endpoint, and
kept open by :class:`SerialService`, which waits for a device missing at
start and reopens one that vanishes (a USB unplug) with backoff, each
outage logged once. The same service keeps a serial line relayed over the
network open (:mod:`blip.source.relay`).
"""

import os
from typing import Any, Optional

from serial import SerialException
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorFDSet,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from blip.common.retry import backoff
from blip.counters import Counters
from blip.source.arduino import MeterFactory
from blip.source.kept_input import KeptInputPort

#: Seconds before the first attempt to reopen a lost serial device.
FIRST_REOPEN_DELAY = 0.5
#: Most seconds between two attempts to reopen a lost serial device.
MAX_REOPEN_DELAY = 5.0


class Openings:
    """
    Counts the openings of a serial source and the attempts to open it that
    failed, and warns of a failure only until the source was first open:
    after that its loss was logged (by
    :meth:`~blip.source.arduino.MeterFactory.source_closed`), and the
    failed attempts to open it again are only counted.

    :param counters: where openings and failures are counted.
    """

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self._warned = False

    def failed(self, log: Logger, format: str, **fields: Any) -> None:
        """
        Count a failed attempt; warn with ``format`` and ``fields`` if it
        is the first since the daemon started and the source was never
        open.
        """
        self.counters.serial_failures += 1
        if not self._warned:
            log.warn(format, **fields)
            self._warned = True

    def opened(self) -> None:
        """
        Count an opening.
        """
        self._warned = True
        self.counters.serial_opens += 1


@implementer(IStreamClientEndpoint)
class SerialEndpoint:
    """
    Opens a serial device as a client endpoint, so that
    :class:`~twisted.application.internet.ClientService` can reopen it with
    backoff after the device vanishes (a USB unplug) or fails.

    A device that cannot be opened before it was ever open is logged once;
    after that, the loss is logged by the protocol and the failed attempts
    to reopen it are only counted.

    :param reactor: the reactor to read the device with.
    :param device: the device's path, e.g. ``/dev/arduino``.
    :param baudrate: the serial speed.
    :param counters: where openings and failures to open are counted.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorFDSet,
        device: str,
        baudrate: int,
        counters: Counters,
    ) -> None:
        self.reactor = reactor
        self.device = device
        self.baudrate = baudrate
        self.openings = Openings(counters)
        self._held: Optional[int] = None

    def __repr__(self) -> str:
        return f"<SerialEndpoint {self.device} {self.baudrate} baud>"

    def hold(self) -> None:
        """
        Open the device now and keep it for the first connection: called
        while the daemon still runs as root, before ``twistd --uid/--gid``
        drops privileges, so that a device only root may open is read all
        the same. Reopening it after it was lost (a USB unplug) is done by
        the user the daemon runs as.
        """
        try:
            self._held = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            # Tried again (and logged) as the user the daemon runs as.
            self.log.debug(
                "cannot open serial device {device} before dropping privileges: {why}",
                device=self.device, why=e.strerror,
            )

    def release(self) -> None:
        """
        Close the device opened by :meth:`hold` if no connection took it.
        """
        held, self._held = self._held, None
        if held is not None:
            os.close(held)

    def connect(self, protocolFactory: IProtocolFactory) -> "Deferred[IProtocol]":
        # A serial device has no address (Twisted's own factories take None).
        protocol = protocolFactory.buildProtocol(None)  # type: ignore[arg-type]
        if protocol is None:
            return fail(NoProtocol())
        held, self._held = self._held, None
        try:
            KeptInputPort(
                protocol, self.device, self.reactor, baudrate=self.baudrate, held_fd=held
            )
        except (SerialException, OSError, ValueError) as e:
            self.openings.failed(
                self.log,
                "cannot open serial device {device}: {why}; waiting for it",
                device=self.device,
                why=str(e),
            )
            return fail(e)
        self.openings.opened()
        self.log.info(
            "reading serial device {device} at {baudrate} baud",
            device=self.device,
            baudrate=self.baudrate,
        )
        return succeed(protocol)


class SerialService(ClientService):
    """
    Keeps the serial device open: waits for it when it is missing, reopens
    it with backoff (up to :data:`MAX_REOPEN_DELAY`) when it is lost, and
    tells the factory when it closes it on purpose.

    :param endpoint: the device (a :class:`SerialEndpoint`), or the serial
        line relayed over the network (a
        :class:`~blip.source.relay.RelayEndpoint`).
    :param factory: builds the protocol for each opening.
    :param clock: times the attempts.
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, factory: MeterFactory, clock: IReactorTime
    ) -> None:
        super().__init__(
            endpoint,
            factory,
            retryPolicy=backoff(FIRST_REOPEN_DELAY, MAX_REOPEN_DELAY),
            clock=clock,
        )
        self.meter_factory = factory
        self.serial_endpoint = endpoint

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        # Only root may be about to give up the right to open the device.
        if os.geteuid() == 0 and isinstance(self.serial_endpoint, SerialEndpoint):
            self.serial_endpoint.hold()

    def startService(self) -> None:
        self.meter_factory.stopping = False
        super().startService()

    def stopService(self) -> "Deferred[None]":
        self.meter_factory.stopping = True
        if isinstance(self.serial_endpoint, SerialEndpoint):
            self.serial_endpoint.release()
        return super().stopService()
