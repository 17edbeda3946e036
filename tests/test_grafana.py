"""
Tests of the Grafana files in contrib/grafana: the provisioning files are
valid, and every SQL query of the dashboard (panels and variables) runs
against the real schema filled through the daemon's store, with Grafana's
macros expanded as Grafana expands them for PostgreSQL, and returns the
columns and values its panel expects.
"""

import json
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2
import pytest
import pytest_twisted
import yaml

from blip.db.node_state import MeterRows
from blip.meters import Meter
from blip.model import Point

GRAFANA = Path(__file__).resolve().parent.parent / "contrib" / "grafana"
HOUSE = Meter(
    id=1, label="House", pulses_per_kwh=600.0, multiplier=4.0, price_per_kwh=2.0,
    currency="kr", timezone="Europe/Copenhagen",
)
SHED = Meter(id=2, label="Shed", currency="kr")
#: Four days of a blip every 30 s, across the spring DST change.
START = datetime(2024, 3, 29, tzinfo=timezone.utc)
STEP_MS = 30_000
BLIPS = 4 * 2880
#: The oid of timestamptz, and those of the types Grafana reads as numbers.
TIMESTAMPTZ = 1184

OIDS_NUMBER = set(psycopg2.extensions.FLOAT.values) | set(psycopg2.extensions.DECIMAL.values)


def dashboard() -> dict[str, Any]:
    """:return: the dashboard."""
    return json.loads((GRAFANA / "dashboards" / "blipserver.json").read_text())


def panel(title: str) -> dict[str, Any]:
    """:return: the panel of that title."""
    return next(p for p in dashboard()["panels"] if p["title"] == title)


def grafana_interval(ms: int) -> str:
    """:return: an interval as Grafana writes ``$__interval`` (``1m``, ``2h``)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def expand(sql: str, start: datetime, end: datetime, interval_ms: int, variables: dict[str, str]) -> str:
    """
    Expand Grafana's PostgreSQL macros and the dashboard's variables as
    Grafana does before it sends a query.
    """

    def iso(moment: datetime) -> str:
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    macros = [
        (r"\$__timeFilter\(([^)]*)\)", lambda m: f"{m.group(1)} BETWEEN '{iso(start)}' AND '{iso(end)}'"),
        (r"\$__timeFrom\(\)", lambda m: f"'{iso(start)}'"),
        (r"\$__timeTo\(\)", lambda m: f"'{iso(end)}'"),
        (r"\$__unixEpochFrom\(\)", lambda m: str(int(start.timestamp()))),
        (r"\$__unixEpochTo\(\)", lambda m: str(int(end.timestamp()))),
        (r"\$__interval_ms\b", lambda m: str(interval_ms)),
        (r"\$__interval\b", lambda m: grafana_interval(interval_ms)),
    ]
    for pattern, replace in macros:
        sql = re.sub(pattern, replace, sql)
    sql = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], sql)
    assert "$" not in sql, f"unexpanded macro or variable in:\n{sql}"
    return sql


def run(database, sql: str) -> tuple[list[tuple[str, int]], list[tuple]]:
    """:return: the columns (name, type oid) and rows of a query."""
    connection = psycopg2.connect(database.dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return [(c.name, c.type_code) for c in cursor.description], cursor.fetchall()
    finally:
        connection.close()


def query(database, title: str, start: datetime, end: datetime, interval_ms: int, meter: int = 1):
    """:return: columns and rows of a panel's query for a time range."""
    (target,) = panel(title)["targets"]
    return run(database, expand(target["rawSql"], start, end, interval_ms, {"meter": str(meter)}))


@pytest_twisted.async_yield_fixture
async def filled(store, database):
    """
    The schema with two meters and four days of blips of the house (every
    30 s, 800 W), written through the daemon's store, so that the rollup
    trigger fills the minute and hour rollups.
    """
    await MeterRows(store.pool).save_meters([HOUSE, SHED])
    first = int(START.timestamp() * 1000)
    points = [Point(1, first + i * STEP_MS, STEP_MS) for i in range(BLIPS)]
    for chunk in range(0, len(points), 5000):
        await store.insert(points[chunk:chunk + 5000])
    await store.insert([Point(2, first + 5000, 1800)])
    yield database


def test_provisioning_files() -> None:
    """
    The data source file provisions a PostgreSQL data source whose uid the
    dashboard's panels use; the dashboard provider file points at a
    folder; the dashboard has the panels the README describes.
    """
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "blipserver.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "postgres"
    assert {"database", "sslmode"} <= set(source["jsonData"])
    assert source["secureJsonData"]["password"].startswith("$")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "blipserver.yaml").read_text())
    assert providers["providers"][0]["options"]["path"]
    board = dashboard()
    assert {p["datasource"]["uid"] for p in board["panels"]} == {source["uid"]}
    assert [p["title"] for p in board["panels"]] == [
        "Power now", "Energy in range", "Cost in range ($currency)", "Power",
        "Energy per day", "Cost per day ($currency)",
    ]
    for item in board["panels"]:
        (target,) = item["targets"]
        assert target["rawQuery"] and target["datasource"] == item["datasource"]


def test_variables(filled) -> None:
    """
    The meter variable lists the meters by label (``__text``) with their id
    as value (``__value``); the hidden currency variable is the meter's.
    """
    meter, currency = dashboard()["templating"]["list"]
    columns, rows = run(filled, expand(meter["query"], START, START, 60_000, {}))
    assert [c[0] for c in columns] == ["__value", "__text"]
    assert rows == [(1, "House"), (2, "Shed")]
    columns, rows = run(filled, expand(currency["query"], START, START, 60_000, {"meter": "1"}))
    assert rows == [("kr",)]


def test_power_resolution_follows_the_interval(filled) -> None:
    """
    The power panel returns ``time`` (timestamptz) and ``power`` (W): from
    the minute rollups in buckets of Grafana's interval for short ranges,
    from the hour rollups for long ones; a blip every 30 s at 600
    impulses/kWh x4 is 800 W throughout.
    """
    six_hours = (START + timedelta(hours=12), START + timedelta(hours=18))
    columns, rows = query(filled, "Power", *six_hours, 60_000)
    assert columns[0] == ("time", TIMESTAMPTZ) and columns[1][0] == "power"
    assert columns[1][1] in OIDS_NUMBER
    assert len(rows) == 6 * 60
    assert rows[0][0] == six_hours[0] and rows[-1][0] == six_hours[1] - timedelta(minutes=1)
    assert all(abs(float(power) - HOUSE.watts(STEP_MS)) < 1e-6 for _, power in rows)

    columns, rows = query(filled, "Power", *six_hours, 300_000)
    assert len(rows) == 6 * 12 and rows[1][0] - rows[0][0] == timedelta(minutes=5)

    ninety_days = (START - timedelta(days=80), START + timedelta(days=10))
    columns, rows = query(filled, "Power", *ninety_days, 7_200_000)
    assert [c[0] for c in columns] == ["time", "power"]
    assert len(rows) == 4 * 12, "two-hour buckets of the four days"
    assert all(abs(float(power) - 800) < 1e-6 for _, power in rows)


def local_days() -> Counter:
    """:return: the house's blips per calendar day in its time zone."""
    zone = ZoneInfo(HOUSE.timezone)
    first = int(START.timestamp() * 1000)
    return Counter(
        datetime.fromtimestamp((first + i * STEP_MS) / 1000, zone).date() for i in range(BLIPS)
    )


def test_energy_and_cost_per_day(filled) -> None:
    """
    Energy and cost per day return ``time`` (local midnight) and ``energy``
    in kWh or ``cost``: the blips of each calendar day in the meter's time
    zone (a 23-hour day at the DST change) times its kWh per blip and price.
    """
    zone = ZoneInfo(HOUSE.timezone)
    expected = {day: count * HOUSE.kwh_per_blip for day, count in local_days().items()}
    week = (START - timedelta(days=1), START + timedelta(days=6))
    for title, column, factor in (("Energy per day", "energy", 1.0), ("Cost per day ($currency)", "cost", 2.0)):
        columns, rows = query(filled, title, *week, 86_400_000)
        assert columns[0] == ("time", TIMESTAMPTZ) and columns[1][0] == column
        got = {moment.astimezone(zone).date(): float(value) for moment, value in rows}
        assert all(moment.astimezone(zone).hour == 0 for moment, _ in rows)
        assert got.keys() == expected.keys()
        for day, kwh in expected.items():
            assert abs(got[day] - kwh * factor) < 1e-9, day
    short_day = datetime(2024, 3, 31).date()
    assert local_days()[short_day] == 23 * 120


def test_stats(filled) -> None:
    """
    The stats return the power of the last blip, and the energy and cost
    over the range from the minute rollups (zero where there is none).
    """
    everything = (START - timedelta(days=1), START + timedelta(days=5))
    columns, rows = query(filled, "Power now", *everything, 60_000)
    assert [c[0] for c in columns] == ["time", "power"] and float(rows[0][1]) == HOUSE.watts(STEP_MS)
    for title in ("Energy in range", "Cost in range ($currency)"):
        columns, rows = query(filled, title, *everything, 60_000)
        assert [c[0] for c in columns] == ["energy", "cost"]
        assert [float(v) for v in rows[0]] == pytest.approx([BLIPS * HOUSE.kwh_per_blip, BLIPS * HOUSE.kwh_per_blip * 2])
    columns, rows = query(filled, "Energy in range", START - timedelta(days=9), START - timedelta(days=8), 60_000)
    assert [float(v) for v in rows[0]] == [0.0, 0.0]
    columns, rows = query(filled, "Energy in range", *everything, 60_000, meter=2)
    assert float(rows[0][0]) == pytest.approx(0.001)
