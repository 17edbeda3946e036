"""
The parameters of the modern API: each is read from the query string (or,
for ``Last-Event-ID``, a header) and turned into a value, or into a 400
answer that names the parameter and says what is wrong with it.
"""

import re
from datetime import datetime, timedelta, timezone
from typing import Optional, Sequence
from zoneinfo import ZoneInfo

from twisted.web.iweb import IRequest

from blip.web.errors import BadRequest

#: The earliest and latest instants, in unix ms, that a time may name: those
#: of RFC 3339 date-times (years 1 to 9999, offsets up to a day), rounded out.
EARLIEST = -62_135_683_200_000
LATEST = 253_402_387_200_000

#: Longest parameter value read.
MAX_VALUE = 200

#: An integer parameter (and an event id): what a signed 64-bit integer
#: surely holds.
INTEGER = "-?[0-9]{1,18}"

_INTEGER = re.compile(INTEGER)
# An offset whose "+" arrived unescaped in a query string, as a space.
_SPACED_OFFSET = re.compile(r"(T[0-9:.,]+) ([0-9]{2}(:?[0-9]{2})?)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class BadParameter(BadRequest):
    """
    A query parameter has a value the API cannot use.

    :param name: the parameter.
    :param why: what is wrong with it.
    """

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name


class Query:
    """
    The query parameters of one request.

    :param request: the request whose query string is read.
    """

    def __init__(self, request: IRequest) -> None:
        self._args: dict[bytes, list[bytes]] = request.args or {}

    def text(self, name: str) -> Optional[str]:
        """
        :return: the parameter's value, or None when it is not given.
        :raise BadParameter: when it is given twice, is too long, or is not
            UTF-8.
        """
        values = self._args.get(name.encode())
        if not values:
            return None
        if len(values) > 1:
            raise BadParameter(name, "given more than once")
        if len(values[0]) > MAX_VALUE:
            raise BadParameter(name, f"longer than {MAX_VALUE} bytes")
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadParameter(name, "not UTF-8") from None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """
        :return: the parameter as an integer from ``low`` to ``high``.
        """
        text = self.text(name)
        if text is None:
            return default
        if not _INTEGER.fullmatch(text):
            raise BadParameter(name, f"must be an integer, not {text!r}")
        value = int(text)
        if not low <= value <= high:
            raise BadParameter(name, f"must be from {low} to {high}, not {value}")
        return value

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        """
        :return: the parameter, one of ``choices``.
        """
        text = self.text(name)
        if text is None:
            return default
        if text not in choices:
            raise BadParameter(name, f"must be one of {', '.join(choices)}, not {text!r}")
        return text

    def instant(self, name: str, default: int, zone: str) -> int:
        """
        :param zone: the IANA zone of date-times without an offset.
        :return: the parameter as unix ms: given as unix ms, or as an ISO
            8601 date or date-time.
        """
        text = self.text(name)
        if text is None:
            return default
        return instant(text, name, zone)

    def meters(self, name: str) -> Optional[list[int]]:
        """
        :return: the meter ids of a comma-separated list, or None when the
            parameter is not given.
        """
        text = self.text(name)
        if text is None:
            return None
        ids = []
        for part in text.split(","):
            part = part.strip()
            if not (part.isascii() and part.isdigit() and len(part) <= 10):
                raise BadParameter(name, f"must be meter ids separated by commas, not {text[:40]!r}")
            ids.append(int(part))
        return sorted(set(ids))


def instant(text: str, name: str, zone: str) -> int:
    """
    Read a time: an integer number of unix ms, or an ISO 8601 date or
    date-time; one without an offset is local time in ``zone``.

    :return: unix ms, from :data:`EARLIEST` to :data:`LATEST`.
    :raise BadParameter: for anything else.
    """
    if _INTEGER.fullmatch(text):
        value = int(text)
    else:
        try:
            moment = datetime.fromisoformat(_SPACED_OFFSET.sub(r"\1+\2", text))
        except ValueError:
            raise BadParameter(
                name, f"must be unix ms or an ISO 8601 date-time, not {text!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(zone))
        try:
            value = (moment - _EPOCH) // timedelta(milliseconds=1)
        except OverflowError:
            raise BadParameter(name, f"{text!r} is out of range") from None
    if not EARLIEST <= value <= LATEST:
        raise BadParameter(name, f"must be from {EARLIEST} to {LATEST} (unix ms), not {value}")
    return value


def last_event_id(request: IRequest) -> Optional[int]:
    """
    :return: the ``Last-Event-ID`` a live stream resumes after (the stamp
        of the last event its client received), or None without one.
    :raise BadParameter: when it is not an integer.
    """
    raw = request.getHeader(b"last-event-id")
    return None if raw is None else event_id(raw)


def event_id(raw: bytes) -> int:
    """
    :param raw: a ``Last-Event-ID`` header's value.
    :return: the stamp of the event it names.
    :raise BadParameter: when it is not an integer.
    """
    text = raw.decode("latin-1").strip()
    if not _INTEGER.fullmatch(text):
        raise BadParameter("Last-Event-ID", f"must be the stamp of an event, not {text[:40]!r}")
    return int(text)
