"""
Arrival stamps that strictly increase per meter, whatever the clock does.
"""

from twisted.logger import Logger


class Stamps:
    """
    Hands out arrival stamps that strictly increase per meter.

    A blip in the same millisecond as the meter's previous one, or after the
    clock stepped back, is stamped one millisecond after the previous one.
    A meter whose stamps run more than a second ahead of the clock (the clock
    stepped back, or the meter blinks faster than once a millisecond) is
    warned about once, until the clock catches up with its stamps.
    """

    log = Logger()

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self._ahead: set[int] = set()

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
        return now

    def seed(self, meter: int, stamp: int) -> None:
        """
        Make later stamps of ``meter`` come after ``stamp`` (for example the
        last stamp stored before a restart).
        """
        if stamp > self._last.get(meter, stamp - 1):
            self._last[meter] = stamp
