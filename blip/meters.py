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
"""

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from blip.model import DEFAULT_METER, INT_MAX


class MetersError(ValueError):
    """
    The meters file cannot be used; the message says why.
    """


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
    """

    id: int
    label: str = ""
    description: str = ""
    pulses_per_kwh: float = 1000.0
    multiplier: float = 1.0
    price_per_kwh: float = 0.0
    currency: str = ""
    timezone: str = "UTC"

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
            values[name] = float(value)
    try:
        ZoneInfo(values.get("timezone", "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise MetersError(f"{where}: unknown timezone {values['timezone']!r}") from None
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
