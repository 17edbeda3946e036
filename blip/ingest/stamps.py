"""
Arrival stamps that strictly increase per meter, whatever the clock does,
across restarts too: each meter's newest stamp is kept in a small file in
the state directory, which seeds the stamps at the next start, before the
serial port is read and whether or not the database is up (a Raspberry Pi
without a real-time clock may start with its clock behind the points it
stored before a power cut).
"""

import json
import os
from pathlib import Path
from typing import Optional

from twisted.logger import Logger

from blip.common.owned import Folder, Unsafe
from blip.model import INT_MAX


class Stamps:
    """
    Hands out arrival stamps that strictly increase per meter.

    A blip in the same millisecond as the meter's previous one, or after the
    clock stepped back, is stamped one millisecond after the previous one.
    A meter whose stamps run more than a second ahead of the clock (the clock
    stepped back, or the meter blinks faster than once a millisecond) is
    warned about once, until the clock catches up with its stamps.

    :param path: where each meter's newest stamp is kept between runs
        (nowhere when None).
    """

    log = Logger()

    def __init__(self, path: Optional[Path] = None) -> None:
        self.path = path
        self._last: dict[int, int] = {}
        self._ahead: set[int] = set()
        self._changed = False
        self._failing = False

    def next(self, meter: int, now: int) -> int:
        """
        :param meter: the meter that blinked.
        :param now: the current unix time in milliseconds.
        :return: the stamp for this blip.
        """
        last = self._last.get(meter)
        if last is not None and now <= last:
            if last - now > 1000 and meter not in self._ahead:
                self._ahead.add(meter)
                self.log.warn(
                    "meter {meter}'s stamps are {seconds:.1f} s ahead of the clock"
                    " (it stepped back?): they continue from the last one",
                    seconds=(last - now) / 1000,
                    meter=meter,
                )
            now = last + 1
        elif self._ahead:
            self._ahead.discard(meter)
        self._last[meter] = now
        self._changed = True
        return now

    def seed(self, meter: int, stamp: int) -> None:
        """
        Make later stamps of ``meter`` come after ``stamp`` (for example the
        last stamp stored before a restart).
        """
        if stamp > self._last.get(meter, stamp - 1):
            self._last[meter] = stamp
            self._changed = True

    def load(self) -> None:
        """
        Seed the stamps with those a previous run kept; a file that cannot
        be read is logged and ignored.
        """
        if self.path is None or not self.path.exists():
            return
        try:
            kept = json.loads(self.path.read_bytes())["stamps"]
            stamps = {int(meter): stamp for meter, stamp in kept.items()}
            if not all(
                0 <= meter <= INT_MAX and type(stamp) is int for meter, stamp in stamps.items()
            ):
                raise ValueError("not a meter id and a stamp")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            self.log.warn("ignoring {path}: {why}", path=str(self.path), why=str(e))
            return
        for meter, stamp in stamps.items():
            self.seed(meter, stamp)

    def keep(self) -> None:
        """
        Write each meter's newest stamp to the file, if any changed since
        the last time (fsynced and atomically replaced).
        """
        if self.path is None or not self._changed:
            return
        data = json.dumps({"stamps": {str(m): s for m, s in sorted(self._last.items())}})
        try:
            with Folder.trusted(self.path.parent) as folder:
                folder.write(self.path.name, data.encode(), (os.geteuid(), os.getegid()))
        except (OSError, Unsafe) as e:
            if not self._failing:
                self.log.error(
                    "cannot keep the newest stamps in {path}: {why}", path=str(self.path), why=str(e)
                )
            self._failing = True
            return
        self._failing = False
        self._changed = False
