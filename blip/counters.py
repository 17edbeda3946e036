"""
The daemon's counters, kept in one place so that logs, health checks and
metrics all read the same numbers, and the service that logs them once a
minute.
"""

from dataclasses import dataclass, fields
from typing import Optional

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds between two logs of the counters.
LOG_INTERVAL = 60.0

#: The fields of :class:`Counters` that are current values (gauges) rather
#: than running totals.
GAUGES = frozenset({"waiters", "backlog", "forward_backlog", "connections"})


@dataclass
class Counters:
    """
    Running totals since the daemon started, and a few current values
    (:data:`GAUGES`).

    Each layer updates the fields it owns; nobody resets the totals.
    """

    #: Lines read from a serial source (or the simulator), garbage included.
    lines: int = 0
    #: Blips accepted from the serial source and handed to ingest.
    blips: int = 0
    #: Lines dropped because they were not a valid blip, INFO or CONNECTED.
    garbage: int = 0
    #: Points newly committed to the database (duplicates not counted).
    stored: int = 0
    #: Points written to the spool while the database was away or behind.
    spooled: int = 0
    #: Spooled points read back and committed (duplicates included).
    replayed: int = 0
    #: Points committed on a database server and written again to the next
    #: one (after a failover or a restart: see blip.ingest.writer).
    resent: int = 0
    #: Batches the database refused or could not take.
    write_failures: int = 0
    #: Points dropped because neither the database nor the spool took them
    #: (a full disk during an outage) and memory held as many as it may.
    dropped_points: int = 0
    #: Records of a spool left by a previous run that were not valid points
    #: (torn by a crash, damaged on disk), skipped.
    spool_invalid: int = 0
    #: Database connections opened again after they were lost.
    db_reconnects: int = 0
    #: Times the serial device was opened.
    serial_opens: int = 0
    #: Times an open serial device was lost (unplugged, read failed).
    serial_lost: int = 0
    #: Times the serial device could not be opened.
    serial_failures: int = 0
    #: Long-polls refused because --max-waiters were parked.
    waiters_refused: int = 0
    #: Points received by LISTEN (announced by any ingest node).
    notified: int = 0
    #: Points read from the database after the LISTEN connection was lost.
    caught_up: int = 0
    #: Notifications on the points channel that were not lists of points.
    bad_notifications: int = 0
    #: Points received by LISTEN that did not reach the hub: of a meter not
    #: known here, or stamped too far from now (see blip.live.notify).
    notified_refused: int = 0
    #: Requests and connections refused by --allow.
    forbidden: int = 0
    #: Points the write API stored (new ones; those already stored are not
    #: counted).
    api_stored: int = 0
    #: Write API requests refused for their token (401 and 403).
    api_refused: int = 0
    #: Points the --upstream server acknowledged (stored, or already there).
    forwarded: int = 0
    #: Batches the --upstream server refused or could not take.
    forward_failures: int = 0
    #: Points of --peer loggers stored where this node's logger was down.
    repaired: int = 0
    #: Attempts to repair a stretch that failed (the peer away, slow or
    #: wrong); they are made again later.
    repair_failures: int = 0
    #: Points of a peer refused: not strictly increasing, in the future or
    #: out of range.
    peer_refused: int = 0
    #: HTTP connections closed as they opened: over --max-connections or
    #: --max-connections-per-client.
    connections_refused: int = 0
    #: Gauge: long-polls parked now.
    waiters: int = 0
    #: Gauge: points received and not yet committed to the database, in
    #: memory or in the spool (updated at least once per batch).
    backlog: int = 0
    #: Gauge: points not yet acknowledged by the --upstream server.
    forward_backlog: int = 0
    #: Gauge: HTTP connections open now.
    connections: int = 0

    def as_dict(self) -> dict[str, int]:
        """
        :return: every counter by name.
        """
        return {f.name: getattr(self, f.name) for f in fields(self)}


class CountersLog(Service):
    """
    Logs every counter at info level once a minute, and once more on stop.

    :param counters: what to log.
    :param clock: times the logs.
    :param interval: seconds between logs.
    """

    log = Logger()

    def __init__(
        self, counters: Counters, clock: IReactorTime, interval: float = LOG_INTERVAL
    ) -> None:
        self.counters = counters
        self.clock = clock
        self.interval = interval
        self._loop: Optional[LoopingCall] = None
        names = [f.name for f in fields(Counters)]
        self._format = "counters: " + ", ".join(f"{name} {{{name}}}" for name in names)

    def log_now(self) -> None:
        """
        Log the counters as they are now.
        """
        self.log.info(self._format, **self.counters.as_dict())

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.log_now)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(self._failed)

    def _failed(self, f: Failure) -> None:
        self.log.failure("logging the counters failed", f)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.log_now()
