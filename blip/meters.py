"""
The meters: their settings, read from the ``--meters`` TOML file, and the
descriptions the Arduino gives them in ``INFO`` lines.

A meters file lists one ``[[meter]]`` table per meter::

    [[meter]]
    id = 1
    label = "House"
    pulses_per_kwh = 600      # impulses per kWh printed on the meter
    multiplier = 4            # current transformer ratio, 1 without one
    price_per_kwh = 2.0
    currency = "kr"
    timezone = "Europe/Copenhagen"

A meter may have a time-of-use tariff: ``[[meter.tariff]]`` tables after its
``[[meter]]`` table, each a ``price_per_kwh`` for some ``days`` (``mon`` to
``sun``; every day when left out) and ``hours`` (``"HH-HH"`` in the meter's
local time, ``"22-06"`` running past midnight; all day when left out). The
first rule that matches an hour sets its price; hours no rule matches cost
the meter's ``price_per_kwh``::

    [[meter.tariff]]
    price_per_kwh = 2.5
    days = ["mon", "tue", "wed", "thu", "fri"]
    hours = "17-21"
"""

import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from blip.model import DEFAULT_METER, INT_MAX

#: The days of a tariff rule, Monday first.
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MetersError(ValueError):
    """
    The meters file cannot be used; the message says why.
    """


@dataclass(frozen=True, slots=True)
class TariffRule:
    """
    One price of a time-of-use tariff.

    :param price_per_kwh: the price of one kWh while the rule applies.
    :param days: the days it applies on, of :data:`DAYS`.
    :param hours: ``"HH-HH"``: the local hours it applies from (included)
        to (excluded); a start after the end runs past midnight.
    """

    price_per_kwh: float
    days: tuple[str, ...] = DAYS
    hours: str = "00-24"

    def applies(self, day: int, hour: int) -> bool:
        """
        :param day: 0 for Monday to 6 for Sunday.
        :param hour: the local hour, 0 to 23.
        :return: whether the rule sets the price of that hour.
        """
        if DAYS[day] not in self.days:
            return False
        start, end = (int(h) for h in self.hours.split("-"))
        if start < end:
            return start <= hour < end
        return hour >= start or hour < end


@dataclass(frozen=True, slots=True)
class Meter:
    """
    One meter's settings.

    :param id: the id its Arduino lines carry.
    :param label: a short name for pages and dashboards.
    :param description: what the Arduino's ``INFO`` line says of it.
    :param pulses_per_kwh: impulses per kWh of the meter's LED.
    :param multiplier: current transformer ratio (1 without one).
    :param price_per_kwh: price of one kWh, in ``currency``.
    :param currency: the currency's symbol or code.
    :param timezone: IANA zone in which its days, weeks and months run.
    :param tariff: time-of-use prices, first match wins; hours no rule
        matches cost ``price_per_kwh``.
    """

    id: int
    label: str = ""
    description: str = ""
    pulses_per_kwh: float = 1000.0
    multiplier: float = 1.0
    price_per_kwh: float = 0.0
    currency: str = ""
    timezone: str = "UTC"
    tariff: tuple[TariffRule, ...] = ()

    def watts(self, ms: int) -> float:
        """
        :return: the mean power in W over a blip interval of ``ms``.
        """
        return 3.6e9 * self.multiplier / (self.pulses_per_kwh * ms)

    @property
    def kwh_per_blip(self) -> float:
        """
        The energy one blink stands for, in kWh.
        """
        return self.multiplier / self.pulses_per_kwh

    def price_at(self, day: int, hour: int) -> float:
        """
        :param day: 0 for Monday to 6 for Sunday.
        :param hour: the local hour, 0 to 23.
        :return: the price of one kWh used in that hour.
        """
        for rule in self.tariff:
            if rule.applies(day, hour):
                return rule.price_per_kwh
        return self.price_per_kwh

    def week_prices(self) -> list[float]:
        """
        :return: the price of one kWh in each hour of a week, Monday 00-01
            first: ``[day * 24 + hour]``.
        """
        return [self.price_at(day, hour) for day in range(7) for hour in range(24)]


def _price(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise MetersError(f"{where}: price_per_kwh must be a number")
    if not (math.isfinite(value) and value >= 0):
        raise MetersError(f"{where}: price_per_kwh must be 0 or more")
    return float(value)


def _hours(value: Any, where: str) -> str:
    parts = value.split("-") if isinstance(value, str) else []
    if len(parts) != 2 or not all(len(p) == 2 and p.isascii() and p.isdigit() for p in parts):
        raise MetersError(f'{where}: hours must be "HH-HH", like "06-22", not {value!r}')
    start, end = int(parts[0]), int(parts[1])
    if start > 23 or end > 24:
        raise MetersError(f"{where}: hours {value!r}: a start from 00 to 23, an end from 01 to 24")
    if start == end:
        raise MetersError(f"{where}: hours {value!r} is empty; all day is \"00-24\"")
    return str(value)


def _tariff(entries: Any, where: str) -> tuple[TariffRule, ...]:
    if not isinstance(entries, list):
        raise MetersError(f"{where}: tariff must be [[meter.tariff]] tables")
    rules = []
    for index, entry in enumerate(entries):
        here = f"{where}: tariff #{index + 1}"
        if not isinstance(entry, dict):
            raise MetersError(f"{here}: a tariff rule must be a table")
        unknown = sorted(set(entry) - {"price_per_kwh", "days", "hours"})
        if unknown:
            raise MetersError(f"{here}: unknown setting {unknown[0]!r}")
        if "price_per_kwh" not in entry:
            raise MetersError(f"{here}: price_per_kwh is missing")
        days = entry.get("days", list(DAYS))
        if (
            not isinstance(days, list)
            or not days
            or not all(isinstance(d, str) and d in DAYS for d in days)
        ):
            raise MetersError(f"{here}: days must be a list of {', '.join(DAYS)}, not {days!r}")
        rules.append(
            TariffRule(
                price_per_kwh=_price(entry["price_per_kwh"], here),
                days=tuple(d for d in DAYS if d in days),
                hours=_hours(entry.get("hours", "00-24"), here),
            )
        )
    return tuple(rules)


def _meter(entry: Any, where: str) -> Meter:
    if not isinstance(entry, dict):
        raise MetersError(f"{where}: a meter must be a table")
    known = {f.name for f in fields(Meter)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise MetersError(f"{where}: unknown setting {unknown[0]!r}")
    meter_id = entry.get("id")
    if not isinstance(meter_id, int) or isinstance(meter_id, bool) or not 0 <= meter_id <= INT_MAX:
        raise MetersError(f"{where}: id must be an integer from 0 to {INT_MAX}")
    values: dict[str, Any] = {"id": meter_id, "label": f"Meter {meter_id}"}
    for name in ("label", "description", "currency", "timezone"):
        if name in entry:
            if not isinstance(entry[name], str):
                raise MetersError(f"{where}: {name} must be a string")
            values[name] = entry[name]
    for name in ("pulses_per_kwh", "multiplier", "price_per_kwh"):
        if name in entry:
            value = entry[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise MetersError(f"{where}: {name} must be a number")
            if value < 0 or (value == 0 and name != "price_per_kwh"):
                raise MetersError(f"{where}: {name} must be positive")
            if not math.isfinite(value):
                raise MetersError(f"{where}: {name} must be a finite number")
            values[name] = float(value)
    try:
        ZoneInfo(values.get("timezone", "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise MetersError(f"{where}: unknown timezone {values['timezone']!r}") from None
    if "tariff" in entry:
        values["tariff"] = _tariff(entry["tariff"], where)
    return Meter(**values)


def default_meter(meter_id: int) -> Meter:
    """
    :return: the settings of a meter nobody configured.
    """
    return Meter(id=meter_id, label=f"Meter {meter_id}")


class Meters:
    """
    The configured meters, plus descriptions learnt from the Arduino.

    Without a meters file there is one meter: the default meter, 1000
    pulses/kWh, multiplier 1.
    """

    def __init__(self, meters: Iterable[Meter] = ()) -> None:
        self._meters = {m.id: m for m in meters}
        #: Whether the meters were configured (rather than the default).
        self.configured = bool(self._meters)
        if not self._meters:
            self._meters[DEFAULT_METER] = default_meter(DEFAULT_METER)

    @classmethod
    def from_file(cls, path: Path) -> "Meters":
        """
        Read a meters file.

        :raise MetersError: when it cannot be read or is not valid.
        """
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as e:
            raise MetersError(f"{path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise MetersError(f"{path}: {e}") from None
        entries = document.get("meter", [])
        unknown = sorted(set(document) - {"meter"})
        if unknown:
            raise MetersError(f"{path}: unknown section {unknown[0]!r}")
        if not isinstance(entries, list) or not entries:
            raise MetersError(f"{path}: no [[meter]] tables")
        meters = [_meter(e, f"{path}: meter #{i + 1}") for i, e in enumerate(entries)]
        ids = [m.id for m in meters]
        if len(set(ids)) != len(ids):
            raise MetersError(f"{path}: two meters have the same id")
        return cls(meters)

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._meters

    def __iter__(self) -> Iterator[Meter]:
        return iter(sorted(self._meters.values(), key=lambda m: m.id))

    def get(self, meter_id: int) -> Meter:
        """
        :return: the meter's settings, or the defaults for an unknown id.
        """
        meter = self._meters.get(meter_id)
        return meter if meter is not None else default_meter(meter_id)

    def add(self, meter: Meter) -> None:
        """
        Know a meter, or replace what was known of it.
        """
        self._meters[meter.id] = meter

    def describe(self, meter_id: int, description: str) -> None:
        """
        Record the description the Arduino gave a meter.
        """
        self._meters[meter_id] = replace(self.get(meter_id), description=description)
