"""
The Arduino's line protocol, and the serial endpoint it is read through.

The Arduino writes one line per blink: ``<ms>`` (a single-meter sketch) or
``<id> <ms>`` (a multi-meter sketch), plus ``CONNECTED...`` when it boots and
``INFO <id> <description>`` to name a meter. Every line is parsed here,
stamped with its arrival time and handed on as a :class:`~blip.model.Point`;
anything else is counted, logged at most once a second and dropped.

The serial device is kept open by :class:`SerialService`: a device missing at
start is waited for, and a device that vanishes (a USB unplug) is reopened
with backoff; each outage is logged once.
"""

import errno
import os
import re
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional

import serial
from serial import SerialException
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorFDSet,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.serialport import SerialPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from blip.counters import Counters
from blip.ingest.stamps import Stamps
from blip.model import DEFAULT_METER, INT_MAX, Point

#: Longest blip line accepted, in bytes, ``\r`` included.
MAX_BLIP_LINE = 64
#: Longest line of any kind (``INFO`` descriptions are longer than blips);
#: beyond this the buffer is dropped up to the next newline.
MAX_LINE = 1024
#: Most seconds between two attempts to reopen a lost serial device.
MAX_REOPEN_DELAY = 5.0

_INFO = re.compile(rb"INFO[ \t]+([0-9]{1,10})[ \t]+(.*)", re.DOTALL)
_ESCAPE = re.compile(rb"\\([0-9a-fA-F]{2})")

Receive = Callable[[Point], None]
Describe = Callable[[int, str], None]
Notify = Callable[[], None]


def unescape(text: bytes) -> str:
    """
    Decode the ``\\xx`` hex escapes of an ``INFO`` description.

    :param text: the raw description.
    :return: the description as text; bytes that are not UTF-8 become U+FFFD.
    """
    raw = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), text)
    return raw.decode("utf-8", errors="replace")


if TYPE_CHECKING:
    # Factory is generic over its protocol only in recent Twisted, and
    # setup.cfg allows older ones: subscripted for the checker alone.
    _Factory = Factory["MeterProtocol"]
else:
    _Factory = Factory


class MeterFactory(_Factory):
    """
    Builds a :class:`MeterProtocol` for each opening of the serial source and
    holds what they share: where points go, the stamps, the clock, the
    counters and the rate limit of garbage warnings.

    :param receive: called with every valid point, at once.
    :param describe: called with ``(meter, description)`` for ``INFO`` lines.
    :param opened: called each time the source opens.
    :param lost: called each time the source closes while not stopping.
    """

    log = Logger()

    def __init__(
        self,
        receive: Receive,
        stamps: Stamps,
        clock: IReactorTime,
        counters: Counters,
        describe: Optional[Describe] = None,
        opened: Optional[Notify] = None,
        lost: Optional[Notify] = None,
    ) -> None:
        self.receive = receive
        self.stamps = stamps
        self.clock = clock
        self.counters = counters
        self.describe = describe
        self.opened = opened
        self.lost = lost
        #: Set while the daemon closes the source on purpose.
        self.stopping = False
        self._warned_at: Optional[float] = None
        self._unwarned = 0

    def buildProtocol(self, addr: object) -> "MeterProtocol":
        protocol = MeterProtocol()
        protocol.factory = self
        return protocol

    def garbage(self, line: bytes, why: str) -> None:
        """
        Count a dropped line; log it unless another was logged less than a
        second ago (those are summed into the next warning).
        """
        self.counters.garbage += 1
        now = self.clock.seconds()
        if self._warned_at is not None and now - self._warned_at < 1.0:
            self._unwarned += 1
            return
        self.log.warn(
            "dropped serial line {line!r}: {why}"
            " ({unwarned} more dropped since the last warning)",
            line=line[:MAX_BLIP_LINE],
            why=why,
            unwarned=self._unwarned,
        )
        self._warned_at = now
        self._unwarned = 0

    def source_opened(self) -> None:
        """
        A protocol of this factory was connected to its source.
        """
        if self.opened is not None:
            self.opened()

    def source_closed(self, reason: Failure) -> None:
        """
        A protocol of this factory lost its source: log and count it,
        unless the daemon closed it on purpose.
        """
        if self.stopping:
            self.log.info("serial source closed")
            return
        self.counters.serial_lost += 1
        self.log.warn(
            "serial source lost: {why}; reopening it as soon as it is back",
            why=reason.getErrorMessage(),
        )
        if self.lost is not None:
            self.lost()


class MeterProtocol(Protocol):
    """
    Parses the Arduino's lines; see the module docstring for the format.

    Lines end with ``\\n`` or ``\\r\\n``. The first line after the source
    opens may be the tail of a line the Arduino began before, so it is
    dropped. Lines are split here rather than by ``LineReceiver``, which on an
    overlong line throws away the valid lines read with it, and copies its
    buffer once per line.
    """

    log = Logger()
    factory: MeterFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._first = True
        self._skipping = False

    def dataReceived(self, data: bytes) -> None:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if self._skipping or self._first:
                self._skipping = self._first = False
                continue
            self.lineReceived(line)
        if len(self._buffer) > MAX_LINE:
            self.factory.counters.lines += 1
            self.factory.garbage(self._buffer, f"longer than {MAX_LINE} bytes")
            self._buffer = b""
            self._skipping = True

    def lineReceived(self, line: bytes) -> None:
        """
        Handle one line, without its ``\\n``.
        """
        factory = self.factory
        factory.counters.lines += 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_BLIP_LINE:
            self._long_line(line)
            return
        fields = line.split()
        if len(fields) == 1 and fields[0].isdigit():
            meter, ms = DEFAULT_METER, int(fields[0])
        elif len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            meter, ms = int(fields[0]), int(fields[1])
        else:
            self._other_line(line)
            return
        if ms == 0:
            factory.garbage(line, "interval of 0 ms")
        elif ms > INT_MAX or meter > INT_MAX:
            factory.garbage(line, "number too large")
        else:
            now = int(factory.clock.seconds() * 1000)
            stamp = factory.stamps.next(meter, now)
            factory.counters.blips += 1
            factory.receive(Point(meter, stamp, ms))

    def _long_line(self, line: bytes) -> None:
        if line.startswith((b"INFO", b"CONNECTED")):
            self._other_line(line)
        else:
            self.factory.garbage(line, f"longer than {MAX_BLIP_LINE} bytes")

    def _other_line(self, line: bytes) -> None:
        factory = self.factory
        if line.startswith(b"CONNECTED"):
            self.log.info(
                "Arduino says {line}", line=line.decode("ascii", "replace")
            )
            return
        info = _INFO.fullmatch(line)
        if info is not None and int(info.group(1)) <= INT_MAX:
            meter, description = int(info.group(1)), unescape(info.group(2))
            self.log.info(
                "meter {meter} is {description!r}",
                meter=meter,
                description=description,
            )
            if factory.describe is not None:
                factory.describe(meter, description)
            return
        if not line.strip():
            factory.garbage(line, "empty line")
        elif line.lstrip().startswith(b"-"):
            factory.garbage(line, "negative number")
        else:
            factory.garbage(line, "not a blip")

    def connectionMade(self) -> None:
        self.factory.source_opened()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.source_closed(reason)


class _KeptInput(serial.Serial):
    """
    pyserial's port, except that opening it keeps what the device sent
    before (pyserial and Twisted both throw it away): lines a device
    buffered while the daemon was restarting are read rather than lost.
    """

    if TYPE_CHECKING:
        # pyserial's own, private and so missing from its type stubs.
        _dsrdtr: bool
        _rtscts: bool

        def _reconfigure_port(self, force_update: bool = False) -> None: ...
        def _update_dtr_state(self) -> None: ...
        def _update_rts_state(self) -> None: ...

    def _reset_input_buffer(self) -> None:
        pass

    @classmethod
    def adopting(cls, fd: int, port: str, **settings: Any) -> "_KeptInput":
        """
        :return: a port over ``fd``, a descriptor of the device opened
            earlier (before the daemon gave up root), set up as opening
            ``port`` would set it up; ``fd`` is closed with the port, or at
            once if it cannot be set up.
        """
        device = cls(None, **settings)
        device.port = port
        device.fd = fd
        try:
            device._reconfigure_port(force_update=True)
            try:
                if not device._dsrdtr:
                    device._update_dtr_state()
                if not device._rtscts:
                    device._update_rts_state()
            except OSError as e:
                # A pty has no modem lines.
                if e.errno not in (errno.EINVAL, errno.ENOTTY):
                    raise
            device.pipe_abort_read_r, device.pipe_abort_read_w = os.pipe()
            device.pipe_abort_write_r, device.pipe_abort_write_w = os.pipe()
        except BaseException:
            os.close(fd)
            device.fd = None
            for end in ("read_r", "read_w", "write_r", "write_w"):
                pipe = getattr(device, f"pipe_abort_{end}", None)
                if pipe is not None:
                    os.close(pipe)
            raise
        device.is_open = True
        return device


class _SerialPort(SerialPort):
    """
    Twisted's serial transport over :class:`_KeptInput`.

    :param held_fd: a descriptor of the device opened earlier, to use
        instead of opening it now.
    """

    _serialFactory = _KeptInput

    def __init__(self, *args: Any, held_fd: Optional[int] = None, **kwargs: Any) -> None:
        if held_fd is not None:
            # Twisted calls any factory of pyserial ports, not only a class.
            self._serialFactory = partial(_KeptInput.adopting, held_fd)  # type: ignore[assignment]
        super().__init__(*args, **kwargs)


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
        self.counters = counters
        self._warned = False
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
            _SerialPort(
                protocol, self.device, self.reactor, baudrate=self.baudrate, held_fd=held
            )
        except (SerialException, OSError, ValueError) as e:
            self.counters.serial_failures += 1
            if not self._warned:
                self.log.warn(
                    "cannot open serial device {device}: {why}; waiting for it",
                    device=self.device,
                    why=str(e),
                )
                self._warned = True
            return fail(e)
        self._warned = True
        self.counters.serial_opens += 1
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

    :param endpoint: the device.
    :param factory: builds the protocol for each opening.
    :param clock: times the attempts.
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, factory: MeterFactory, clock: IReactorTime
    ) -> None:
        super().__init__(
            endpoint,
            factory,
            retryPolicy=backoffPolicy(0.5, MAX_REOPEN_DELAY, 2.0),
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
