"""
The Arduino's line protocol.

The Arduino writes one line per blink: ``<ms>`` (a single-meter sketch) or
``<id> <ms>`` (a multi-meter sketch), plus ``CONNECTED...`` when it boots and
``INFO <id> <description>`` to name a meter. Every line is parsed here,
stamped with its arrival time and handed on as a :class:`~blip.model.Point`;
anything else is counted, logged at most once a second and dropped.

The bytes come from the serial device (:mod:`blip.source.device`) or from
the simulator (:mod:`blip.source.simulate`).
"""

import re
from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip.common.throttle import Throttle
from blip.counters import Counters
from blip.ingest.stamps import Stamps
from blip.model import DEFAULT_METER, INT_MAX, Point

#: Longest blip line accepted, in bytes, ``\r`` included.
MAX_BLIP_LINE = 64
#: Longest line of any kind (``INFO`` descriptions are longer than blips);
#: beyond this the buffer is dropped up to the next newline.
MAX_LINE = 1024
#: Seconds between two warnings about dropped lines.
GARBAGE_WARN_INTERVAL = 1.0

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
    #: Not "Starting factory" at each connection to a relay.
    noisy = False

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
        self._warnings = Throttle(clock, GARBAGE_WARN_INTERVAL)

    def buildProtocol(self, addr: object) -> "MeterProtocol":
        protocol = MeterProtocol()
        protocol.factory = self
        return protocol

    def garbage(self, line: bytes, why: str) -> None:
        """
        Count a dropped line; log it unless another was logged less than
        :data:`GARBAGE_WARN_INTERVAL` ago (those are summed into the next
        warning).
        """
        self.counters.garbage += 1
        unwarned = self._warnings.due()
        if unwarned is None:
            return
        self.log.warn(
            "dropped serial line {line!r}: {why}"
            " ({unwarned} more dropped since the last warning)",
            line=line[:MAX_BLIP_LINE],
            why=why,
            unwarned=unwarned,
        )

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
