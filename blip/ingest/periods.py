"""
The record of known downtime: the periods when this node was ingesting with
its serial source open, kept in the ``ingest_periods`` table, so that a gap
in the readings can be told apart from a meter that was merely idle.

A period starts when the source opens and ends when it is lost (``device
lost``) or the daemon stops (``stop``). While it lasts, its ``alive_at`` is
refreshed every :data:`ALIVE_INTERVAL`; a period a killed daemon left open is
closed at its ``alive_at`` for reason ``crash`` when the node starts again.

Periods are kept in memory until the database has them, so an outage of the
database delays the record but does not lose it. While the database cannot
record them, and when the daemon stops, they are also kept in a small file
in the state directory (at each refresh: no disk writes for them while the
database is fine; written whole, synced and renamed into place by
:class:`blip.common.owned.Folder`), which the next start records first — a
period cut short by a crash during an outage then ends at its last refresh,
not at the last one the database saw.
"""

import json
import os
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from blip.common.lifecycle import AfterReady
from blip.common.owned import Folder, Unsafe
from blip.common.waiting import within
from blip.db.node_state import IngestPeriods

#: Seconds between two refreshes of the open period's ``alive_at``: how
#: precisely the end of a period cut short by a crash is known.
ALIVE_INTERVAL = 10.0
#: On stop, seconds to wait for the database to record the end.
STOP_TIMEOUT = 1.0

#: Reasons a period ends.
STOP, DEVICE_LOST, CRASH = "stop", "device lost", "crash"


@dataclass(frozen=True, slots=True)
class Period:
    """
    One period of ingesting with the source open; times in unix ms.

    :param started: when the source opened.
    :param alive_at: when it was last known open.
    :param ended: when it closed, or None while open.
    :param end_reason: why it closed.
    """

    started: int
    alive_at: int
    ended: Optional[int] = None
    end_reason: Optional[str] = None


class Periods:
    """
    This node's periods: the open one, and those the database does not
    have yet.

    :param store: where periods are recorded.
    :param node: this node's name.
    :param clock: the current time.
    :param path: where periods the database has not recorded by the time
        the daemon stops are kept for the next start (nowhere when None).
    """

    log = Logger()

    def __init__(
        self, store: IngestPeriods, node: str, clock: IReactorTime, path: Optional[Path] = None
    ) -> None:
        self.store = store
        self.node = node
        self.clock = clock
        self.path = path
        #: The period under way, if the source is open.
        self.current: Optional[Period] = None
        self._boot = self._now()
        self._last_started = 0
        self._unsaved: dict[int, Period] = {}
        self._ready = False
        self._stopped = False
        self._crashes_closed = False
        self._failing = False
        self._saving: Optional[Deferred[None]] = None
        self._again = False

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def open(self) -> None:
        """
        Take over the periods a previous run kept because the database had
        not recorded them; one it left open ended in a crash at its last
        refresh.
        """
        if self.path is None or not self.path.exists():
            return
        try:
            kept = json.loads(self.path.read_text(encoding="utf-8"))
            periods = [
                Period(int(a), int(b), int(c if c is not None else b), str(d or CRASH))
                for a, b, c, d in kept["periods"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.log.warn("ignoring {path}: {why}", path=str(self.path), why=str(e))
            return
        for period in periods:
            self._unsaved[period.started] = period
            self._last_started = max(self._last_started, period.started)

    def opened(self) -> None:
        """
        The source opened: a period starts.
        """
        if self._stopped:
            return
        if self.current is not None:
            self._end(DEVICE_LOST)
        started = max(self._now(), self._last_started + 1)
        self._last_started = started
        self.current = Period(started, started)
        self._unsaved[started] = self.current
        self.save()

    def lost(self) -> None:
        """
        The source was lost: the period ends.
        """
        if self.current is not None and not self._stopped:
            self._end(DEVICE_LOST)
            self.save()

    def alive(self) -> None:
        """
        Refresh the open period's ``alive_at`` and record what changed.
        """
        if self.current is not None:
            now = max(self._now(), self.current.alive_at)
            self.current = replace(self.current, alive_at=now)
            self._unsaved[self.current.started] = self.current
        if not self._ready or self._failing:
            self._keep()
        self.save()

    def start(self) -> None:
        """
        The database is ready: close what a crash left open, then record.
        """
        self._ready = True
        self.save()

    async def stop(self) -> None:
        """
        End the open period for reason ``stop`` and record it, if the
        database takes it within :data:`STOP_TIMEOUT`; a period that could
        not be closed is closed as a crash at the next start.
        """
        if self.current is not None:
            self._end(STOP)
        self._stopped = True
        self.save()
        if self._saving is not None:
            await within(self._saving, STOP_TIMEOUT, self.clock)
        if self._unsaved and self._keep():
            self.log.info(
                "the database has not recorded {count} ingest periods; they are"
                " recorded at the next start",
                count=len(self._unsaved),
            )

    def _keep(self) -> bool:
        """
        Write the periods the database does not have to the file.

        :return: whether they are in it.
        """
        if self.path is None or not self._unsaved:
            return False
        rows = [astuple(p) for p in self._unsaved.values()]
        data = json.dumps({"node": self.node, "periods": rows}).encode()
        try:
            with Folder.trusted(self.path.parent) as folder:
                folder.write(self.path.name, data, (os.geteuid(), os.getegid()))
        except (OSError, Unsafe) as e:
            self.log.error(
                "cannot keep ingest periods in {path}: {why}", path=str(self.path), why=str(e)
            )
            return False
        return True

    def _end(self, reason: str) -> None:
        assert self.current is not None
        now = max(self._now(), self.current.alive_at)
        ended = replace(self.current, alive_at=now, ended=now, end_reason=reason)
        self._unsaved[ended.started] = ended
        self.current = None

    def save(self) -> None:
        """
        Record the periods the database does not have yet, once it is
        ready; one write at a time.
        """
        if not self._ready:
            return
        if self._saving is not None:
            self._again = True
            return
        done = self._saving = Deferred()
        Deferred.fromCoroutine(self._save(done)).addErrback(
            lambda f: self.log.failure("recording ingest periods failed", f)
        )

    async def _save(self, done: "Deferred[None]") -> None:
        try:
            again = True
            while again:
                self._again = False
                # First what is known (periods a previous run stopped with
                # included), then what only a crash can explain.
                for period in list(self._unsaved.values()):
                    await self.store.save_ingest_period(self.node, *astuple(period))
                    if self._unsaved.get(period.started) == period:
                        del self._unsaved[period.started]
                if not self._crashes_closed:
                    closed = await self.store.end_crashed_ingest_periods(self.node, self._boot)
                    self._crashes_closed = True
                    if closed:
                        self.log.warn(
                            "{count} ingest periods of node {node} were left open by"
                            " a crash; closed them at their last sign of life",
                            count=closed,
                            node=self.node,
                        )
                again = self._again
            self._failing = False
            if not self._unsaved and self.path is not None:
                self.path.unlink(missing_ok=True)
        except Exception as e:
            if not self._failing:
                self.log.warn(
                    "cannot record ingest periods: {why}; trying again later",
                    why=str(e).strip() or repr(e),
                )
            self._failing = True
        finally:
            self._saving = None
            done.callback(None)


class PeriodsService(AfterReady):
    """
    Takes over the periods a previous run kept at once, starts recording
    once the database is ready, refreshes the open period every
    :data:`ALIVE_INTERVAL`, and records the end on stop.

    :param periods: the record.
    :param ready: returns a Deferred that fires when the database is ready.
    :param clock: times the refreshes.
    :param keep: also done at each refresh (keeping other state of ingest
        in the state dir).
    """

    log = Logger()

    def __init__(
        self,
        periods: Periods,
        ready: Callable[[], "Deferred[None]"],
        clock: IReactorTime,
        keep: Optional[Callable[[], None]] = None,
    ) -> None:
        super().__init__("recording ingest periods", ready, periods.start, self._close, self._open)
        self.periods = periods
        self.keep = keep
        self._refresh = LoopingCall(self._alive)
        self._refresh.clock = clock

    def _alive(self) -> None:
        self.periods.alive()
        if self.keep is not None:
            self.keep()

    def _open(self) -> None:
        self.periods.open()
        self._refresh.start(ALIVE_INTERVAL, now=False).addErrback(
            lambda f: self.log.failure("recording ingest periods failed", f)
        )

    async def _close(self) -> None:
        if self._refresh.running:
            self._refresh.stop()
        await self.periods.stop()
