"""
The ``meters`` table, kept in step with the registry of meters
(:class:`blip.meters.Meters`) that the HTTP side reads.

Once the database is ready, :meth:`MeterTable.load` writes the configured
meters (the ``--meters`` file wins over what the table held) and adds to the
registry the meters only the table knows (seen on the serial line before, or
configured on another node). While running, a description from an ``INFO``
line and a meter first seen on the serial line go to the registry at once
and to the table as soon as the database takes them. Every minute the
registry takes what other nodes wrote to the table (:meth:`MeterTable.refresh`).
"""

from dataclasses import replace
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from blip.common.retry import retrying
from blip.db.node_state import MeterRows
from blip.db.pool import RETRIABLE
from blip.meters import Meters, default_meter
from blip.model import Point

Receive = Callable[[Point], None]


class MeterTable:
    """
    Writes the registry's meters to the meters table and reads back those
    it does not know.

    :param store: the rows of the meters table.
    :param meters: the registry; the meters in it now are the configured
        ones if it was read from a file.
    :param clock: times retries of failed writes.
    """

    log = Logger()

    def __init__(self, store: MeterRows, meters: Meters, clock: IReactorTime) -> None:
        self.store = store
        self.meters = meters
        self.clock = clock
        self._configured = list(meters) if meters.configured else []
        self._loaded = False
        self._dirty: dict[int, None] = {}
        # Our changes so far, when each meter last changed (in that count),
        # and the meter whose write is under way: what a refresh must not
        # undo with a row read before the change was stored.
        self._changes = 0
        self._changed_at: dict[int, int] = {}
        self._in_flight: Optional[int] = None
        self._writing: Optional[Deferred[None]] = None

    async def load(self) -> None:
        """
        Write the configured meters, then know every meter of the table: a
        configured meter keeps its settings (and takes the stored
        description if it has none); any other takes the stored settings.
        """
        configured = {m.id for m in self._configured}
        await self.store.save_meters(self._configured)
        for meter in list(self.meters):
            if meter.id not in configured:
                await self.store.note_meter(meter)
        for stored in await self.store.meters():
            if stored.id not in configured:
                self.meters.add(stored)
            elif stored.description and not self.meters.get(stored.id).description:
                self.meters.add(replace(self.meters.get(stored.id), description=stored.description))
        self._loaded = True
        self.log.info(
            "meters: {meters}",
            meters=", ".join(f"{m.id} ({m.label})" for m in self.meters),
        )
        self._flush()

    async def refresh(self) -> None:
        """
        Take what other nodes wrote to the table: every meter not configured
        here follows it (settings from a meters file given to another node,
        a meter first seen or imported elsewhere). Meters with a change of
        ours still to be written keep theirs.
        """
        if not self._loaded:
            return
        configured = {m.id for m in self._configured}
        began = self._changes
        unsettled = {*self._dirty, self._in_flight}
        for stored in await self.store.meters():
            if (
                stored.id in configured
                or stored.id in unsettled
                or self._changed_at.get(stored.id, 0) > began
            ):
                continue
            if stored.id not in self.meters or self.meters.get(stored.id) != stored:
                self.meters.add(stored)
                self.log.info(
                    "meter {meter} ({label}) now has the settings of the meters table",
                    meter=stored.id, label=stored.label,
                )

    def refreshing(self) -> Deferred[None]:
        """
        :meth:`refresh`, for a timer: a database away is left for the next
        time, quietly; anything else is logged. Never fails.
        """
        done = Deferred.fromCoroutine(self.refresh())
        done.addErrback(lambda f: None if f.check(*RETRIABLE) else self.log.failure("reading meters failed", f))
        return done

    def describe(self, meter_id: int, description: str) -> None:
        """
        Record the description an ``INFO`` line gave a meter.
        """
        self.meters.describe(meter_id, description)
        self._changed(meter_id)

    def notice(self, meter_id: int, where: str = "on the serial line") -> None:
        """
        Make a meter known, with the default settings if it is new.

        :param where: where it was seen, for the log.
        """
        if meter_id not in self.meters:
            self.meters.add(default_meter(meter_id))
            self.log.info(
                "new meter {meter} seen {where}; it has the default settings until configured",
                meter=meter_id,
                where=where,
            )
            self._changed(meter_id)

    def noticing(self, receive: Receive) -> Receive:
        """
        :return: ``receive``, after making every meter it is given a point
            of known, with the default settings if it is new.
        """

        def notice(point: Point) -> None:
            self.notice(point.meter)
            receive(point)

        return notice

    def _changed(self, meter_id: int) -> None:
        self._changes += 1
        self._changed_at[meter_id] = self._changes
        self._dirty[meter_id] = None
        self._flush()

    def _flush(self) -> None:
        if self._loaded and self._writing is None and self._dirty:
            # The write may finish at once (the database known to be away):
            # _writing is cleared by the Deferred, after it was set.
            self._writing = Deferred.fromCoroutine(self._write())
            self._writing.addErrback(lambda f: self.log.failure("writing meters failed", f))
            self._writing.addBoth(self._written)

    def _written(self, _: object) -> None:
        self._writing = None

    async def _write(self) -> None:
        while self._dirty:
            meter_id = next(iter(self._dirty))
            del self._dirty[meter_id]
            self._in_flight = meter_id
            try:
                # The settings as they are at each attempt: a change made
                # meanwhile is written too.
                await retrying(
                    lambda: self.store.note_meter(self.meters.get(meter_id)),
                    RETRIABLE, self.clock, self.log, f"write meter {meter_id} to the database",
                )
            finally:
                self._in_flight = None
