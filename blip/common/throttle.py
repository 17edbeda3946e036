"""
Rate-limited logging: a warning that may come thousands of times a second
(garbage on the serial line, refused clients, forged notifications) is
logged at most once per interval, saying how many were held back.
"""

from typing import Optional

from twisted.internet.interfaces import IReactorTime


class Throttle:
    """
    Says when the next line of one kind of warning is due.

    :param clock: the time.
    :param interval: most seconds between two lines.
    """

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self._said_at: Optional[float] = None
        self._held = 0

    def due(self) -> Optional[int]:
        """
        Note one more occurrence.

        :return: None when it must not be logged now (it is counted);
            otherwise how many were held back since the last line logged.
        """
        now = self.clock.seconds()
        if self._said_at is not None and now - self._said_at < self.interval:
            self._held += 1
            return None
        held, self._said_at, self._held = self._held, now, 0
        return held
