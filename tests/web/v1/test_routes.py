"""
Tests of the modern API (/api/v1) over a real port against a real
database: every route's answers, each checked against the OpenAPI document
the API serves; errors; streamed exports; and energy for a year of data
against an independent calculation.
"""

import csv
import io
import json
import random
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any, Callable
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
import pytest_twisted
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from blip.db.repairs import Repair, Repairs
from blip.meters import Meter, Meters, TariffRule
from blip.model import Point
from blip.web.v1.export import PAGE
from blip.web.v1.openapi import document
from tests.conftest import Served

HOUR = 3_600_000
ZONE = "Europe/Copenhagen"
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
#: Monday to Friday 17-21 at 3.0, nights at 1.0, else 2.0.
TARIFF = (
    TariffRule(3.0, days=("mon", "tue", "wed", "thu", "fri"), hours="17-21"),
    TariffRule(1.0, hours="22-06"),
)
HOUSE = Meters([
    Meter(1, label="House", pulses_per_kwh=600.0, multiplier=4.0, price_per_kwh=2.0,
          currency="kr", timezone=ZONE, tariff=TARIFF),
    Meter(3, label="Shed"),
])


def conforms(path: str, status: int, content_type: str, body: bytes) -> Any:
    """
    Check an answer against the OpenAPI document: its status and content
    type are documented for ``path``, and a JSON body fits the schema.

    :return: the decoded body.
    """
    doc = document()
    responses = doc["paths"][path]["get"]["responses"]
    assert str(status) in responses, f"{status} not documented for {path}"
    response = responses[str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    media = content_type.split(";")[0].strip()
    assert media in response["content"], f"{media} not documented for {status} of {path}"
    if not media.endswith("json"):
        return body.decode()
    data = json.loads(body)
    registry = Registry().with_resource("urn:api", Resource(doc, DRAFT202012))
    pointer = "/paths/" + path.replace("~", "~0").replace("/", "~1")
    pointer += f"/get/responses/{status}"
    if "$ref" in responses[str(status)]:
        pointer = responses[str(status)]["$ref"][1:]
    pointer += "/content/" + media.replace("/", "~1") + "/schema"
    Draft202012Validator({"$ref": "urn:api#" + pointer}, registry=registry).validate(data)
    return data


async def fetch(site: Served, path: str, **headers: str) -> tuple[int, Any, Any]:
    """
    GET ``/api/v1`` + ``path``; check the answer against the document.

    :return: status, headers and decoded body.
    """
    code, received, body = await site.get("/api/v1" + path, headers)
    template = _template(path.split("?")[0])
    content_type = received.getRawHeaders(b"Content-Type", [b""])[0].decode()
    return code, received, conforms(template, code, content_type, body)


def _template(path: str) -> str:
    parts = path.split("/")
    if len(parts) > 2 and parts[1] == "meters":
        parts[2] = "{id}"
    return "/".join(parts)


@pytest.fixture
def house(serve: Callable[..., Served]) -> Served:
    """
    The site for a house: meter 1 in Copenhagen (600/kWh, x4, a tariff),
    meter 3 configured without readings; meter 2 only has readings.
    """
    return serve(HOUSE)


@pytest_twisted.ensureDeferred
async def test_openapi_is_served(house: Served) -> None:
    """
    /api/v1/openapi.json serves the document.
    """
    code, headers, doc = await fetch(house, "/openapi.json")
    assert code == 200 and doc == json.loads(json.dumps(document()))


@pytest_twisted.ensureDeferred
async def test_meters(house: Served) -> None:
    """
    /meters lists configured meters and those with readings, with their
    settings and newest point (the live one when newer); /meters/{id}
    answers one, or 404.
    """
    await house.store.insert([Point(1, T0, 1500), Point(2, T0 + 5, 3600)])
    house.hub.publish(Point(1, T0 + 1000, 1000))
    code, _, body = await fetch(house, "/meters")
    assert code == 200
    one, two, three = body["meters"]
    assert one == {
        "id": 1, "label": "House", "description": "", "pulses_per_kwh": 600.0,
        "multiplier": 4.0, "price_per_kwh": 2.0, "currency": "kr", "timezone": ZONE,
        "tariff": [
            {"price_per_kwh": 3.0, "days": ["mon", "tue", "wed", "thu", "fri"], "hours": "17-21"},
            {"price_per_kwh": 1.0, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
             "hours": "22-06"},
        ],
        "last": {"stamp": T0 + 1000, "ms": 1000, "watts": pytest.approx(24000.0)},
    }
    assert (two["id"], two["label"], two["last"]) == (
        2, "Meter 2", {"stamp": T0 + 5, "ms": 3600, "watts": pytest.approx(1000.0)},
    )
    assert (three["id"], three["last"], three["tariff"]) == (3, None, None)
    code, _, body = await fetch(house, "/meters/2")
    assert (code, body) == (200, two)
    assert (await fetch(house, "/meters/7"))[:2][0] == 404
    assert (await fetch(house, "/meters/99999999999"))[0] == 404
    assert (await fetch(house, "/meters/x"))[0] == 400


@pytest_twisted.ensureDeferred
async def test_power(house: Served) -> None:
    """
    /power answers raw points or rollups within max_points, takes ISO 8601
    times, and by default covers the 24 hours before now.
    """
    await house.store.insert([Point(1, T0 + i * 1000, 1000) for i in range(100)])
    code, _, body = await fetch(house, f"/meters/1/power?from={T0}&to={T0 + 100_000}")
    assert code == 200
    assert (body["meter"], body["from"], body["to"], body["resolution_ms"]) == (1, T0, T0 + 100_000, 0)
    assert body["points"][0] == [T0 - 500, 24000.0, 24000.0, 24000.0]
    assert len(body["points"]) == 100
    iso = datetime.fromtimestamp(T0 / 1000, ZoneInfo(ZONE)).isoformat()
    for given in (quote(iso), iso):
        code, _, body = await fetch(house, f"/meters/1/power?from={given}&to={T0 + 100_000}&max_points=10")
        assert (body["from"], body["resolution_ms"], len(body["points"])) == (T0, 60_000, 2)
    house.clock.advance((T0 + HOUR) / 1000 - house.clock.seconds())
    code, _, body = await fetch(house, "/meters/1/power")
    assert (body["from"], body["to"]) == (T0 + HOUR - 86_400_000, T0 + HOUR)


@pytest_twisted.ensureDeferred
async def test_energy_and_gaps(house: Served, database) -> None:
    """
    /energy and /gaps answer their documented shapes; a repaired stretch
    is listed, and its silence is no longer logger_down.
    """
    await house.store.insert([Point(1, T0 + i * 60_000, 60_000) for i in (0, 1, 2, 20)])
    database.sql(
        "INSERT INTO ingest_periods VALUES ('n', %s, %s, %s, 'stop')", (T0 - HOUR, T0 + 10 * 60_000, T0 + 10 * 60_000),
    )
    code, _, energy = await fetch(house, f"/meters/1/energy?from={T0}&to={T0 + HOUR}&period=hour")
    assert code == 200
    assert energy["rows"] == [{"start": T0, "end": T0 + HOUR, "kwh": pytest.approx(4 / 150),
                               "cost": energy["rows"][0]["cost"]}]
    assert (energy["period"], energy["timezone"], energy["currency"], energy["next"]) == ("hour", ZONE, "kr", None)
    assert energy["total"] == {"kwh": energy["rows"][0]["kwh"], "cost": energy["rows"][0]["cost"]}
    code, _, gaps = await fetch(house, f"/meters/1/gaps?from={T0}&to={T0 + 20 * 60_000 + 1}&min_gap=120000")
    assert gaps["gaps"] == [
        {"from": T0 + 120_000, "to": T0 + 600_000, "kind": "idle"},
        {"from": T0 + 600_000, "to": T0 + 1_200_000, "kind": "logger_down"},
    ]
    assert (gaps["min_gap"], gaps["next"], gaps["repairs"]) == (120_000, None, [])
    await Repairs(house.store.pool).record(1, Repair(T0 + 900_000, T0 + 1_200_000, "http://peer", 4, T0))
    code, _, gaps = await fetch(house, f"/meters/1/gaps?from={T0}&to={T0 + 20 * 60_000 + 1}&min_gap=120000")
    assert gaps["gaps"][1:] == [
        {"from": T0 + 600_000, "to": T0 + 900_000, "kind": "logger_down"},
        {"from": T0 + 900_000, "to": T0 + 1_200_000, "kind": "repaired", "peer": "http://peer"},
    ]
    assert gaps["repairs"] == [
        {"from": T0 + 900_000, "to": T0 + 1_200_000, "peer": "http://peer", "points": 4, "at": T0}
    ]


@pytest_twisted.ensureDeferred
async def test_readings_stream_every_point(house: Served) -> None:
    """
    /readings streams every point of the range, past the size of a page,
    as JSON or as CSV with a header and a file name; with a limit, only
    the first points.
    """
    count = PAGE * 2 + 17
    await house.store.insert([Point(1, T0 + i, 1 + i % 7) for i in range(count)])
    code, headers, body = await fetch(house, f"/meters/1/readings?from={T0}&to={T0 + count}")
    assert code == 200
    # Streamed: sent in chunks, without a length known up front.
    assert headers.getRawHeaders(b"Content-Length") is None
    assert body["points"] == [[T0 + i, 1 + i % 7] for i in range(count)]
    assert (body["meter"], body["from"], body["to"]) == (1, T0, T0 + count)
    code, headers, text = await fetch(house, f"/meters/1/readings?from={T0 + 5}&to={T0 + 8}&format=csv")
    assert headers.getRawHeaders(b"Content-Disposition") == [
        b'attachment; filename="meter-1-%d-%d.csv"' % (T0 + 5, T0 + 8)
    ]
    assert list(csv.reader(io.StringIO(text))) == [
        ["stamp", "ms"], [str(T0 + 5), "6"], [str(T0 + 6), "7"], [str(T0 + 7), "1"],
    ]
    code, _, body = await fetch(house, f"/meters/3/readings?from={T0}&to={T0 + 10}")
    assert body["points"] == []
    # A page of the first points, past the size of a page read at once.
    code, _, body = await fetch(house, f"/meters/1/readings?from={T0 + 1}&to={T0 + count}&limit={PAGE + 3}")
    assert body["points"] == [[T0 + i, 1 + i % 7] for i in range(1, PAGE + 4)]
    code, _, text = await fetch(house, f"/meters/1/readings?from={T0}&to={T0 + count}&format=csv&limit=2")
    assert text == f"stamp,ms\r\n{T0},1\r\n{T0 + 1},2\r\n"


@pytest.mark.parametrize(
    "path, status, names",
    [
        ("/meters/1/power?from=yesterday", 400, "from"),
        ("/meters/1/power?to=1.5", 400, "to"),
        ("/meters/1/power?max_points=0", 400, "max_points"),
        ("/meters/1/power?max_points=20001", 400, "max_points"),
        ("/meters/1/power?from=1&from=2", 400, "from"),
        ("/meters/1/energy?period=fortnight", 400, "period"),
        ("/meters/1/gaps?min_gap=0", 400, "min_gap"),
        ("/meters/1/readings?format=xml", 400, "format"),
        ("/meters/1/readings?limit=0", 400, "limit"),
        ("/meters/1/readings?limit=100001", 400, "limit"),
        ("/live?meters=1x2", 400, "meters"),
        ("/meters/-1/power", 400, "meter id"),
        ("/meters/4/power", 404, "unknown meter 4"),
        ("/live?meters=1,4", 404, "unknown meter 4"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_are_problems(house: Served, path: str, status: int, names: str) -> None:
    """
    A bad parameter or unknown meter answers its documented status with an
    application/problem+json body naming what is wrong.
    """
    code, headers, body = await fetch(house, path)
    assert code == status
    assert headers.getRawHeaders(b"Content-Type") == [b"application/problem+json"]
    assert body["status"] == status and names in body["detail"] and body["error"] == body["detail"]


@pytest.mark.parametrize(
    "path, method, status",
    [
        ("/api/v1/nothing", "GET", 404),
        ("/api/v1/meters/1/power/extra", "GET", 404),
        ("/api/v1/meters//power", "GET", 404),
        ("/api/v1/", "GET", 404),
        ("/api/v1/meters", "POST", 405),
        ("/api/v1/live", "DELETE", 405),
    ],
)
@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_methods(house: Served, path: str, method: str, status: int) -> None:
    """
    Unknown paths under /api/v1 are 404 and unsupported methods 405 (with
    Allow), as problem JSON with the CORS headers.
    """
    code, headers, body = await house.get(path, method=method)
    assert code == status
    assert headers.getRawHeaders(b"Content-Type") == [b"application/problem+json"]
    assert json.loads(body)["status"] == status
    assert headers.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
    if status == 405:
        assert headers.getRawHeaders(b"Allow") == [b"GET, HEAD, OPTIONS"]


@pytest_twisted.ensureDeferred
async def test_options_and_cors(house: Served) -> None:
    """
    Every route answers OPTIONS with the CORS headers, like the legacy
    routes, and allows the Last-Event-ID header for the live stream; its
    Allow header names the methods the document gives it.
    """
    for path, operations in document()["paths"].items():
        code, headers, body = await house.get("/api/v1" + path.replace("{id}", "1"), method="OPTIONS")
        assert (code, body) == (200, b"")
        assert headers.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
        assert b"last-event-id" in headers.getRawHeaders(b"Access-Control-Allow-Headers")[0]
        allow = b"GET, HEAD, OPTIONS, POST" if "post" in operations else b"GET, HEAD, OPTIONS"
        assert headers.getRawHeaders(b"Allow") == [allow]


@pytest_twisted.ensureDeferred
async def test_legacy_routes_still_answer(house: Served) -> None:
    """
    Beside /api/v1 the legacy routes and their JSON errors are unchanged.
    """
    await house.store.insert([Point(1, T0, 42)])
    assert (await house.get("/last/1"))[2] == b"[%d,42]" % T0
    code, headers, body = await house.get("/nothing/here")
    assert (code, json.loads(body)) == (404, {"error": "no such route"})


def _year_of_blips() -> list[Point]:
    """
    A year of blips of meter 1 at irregular intervals, with some on and
    next to local midnights and both daylight-saving changes.
    """
    rng = random.Random(2024)
    zone = ZoneInfo(ZONE)
    start = int(datetime(2023, 12, 31, 21, tzinfo=zone).timestamp() * 1000)
    end = int(datetime(2025, 1, 1, 3, tzinfo=zone).timestamp() * 1000)
    stamps = set()
    stamp = start
    while stamp < end:
        stamp += rng.randint(20_000, 900_000)
        stamps.add(stamp)
    day = date(2024, 1, 1)
    while day <= date(2025, 1, 1):
        midnight = int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)
        stamps.update((midnight - 1, midnight, midnight + 1))
        day += timedelta(days=1)
    for change in (datetime(2024, 3, 31, 1, tzinfo=zone), datetime(2024, 10, 27, 0, tzinfo=zone)):
        base = int(change.timestamp() * 1000)
        stamps.update(base + k * 600_000 for k in range(-6, 30))
    return [Point(1, s, 1000) for s in sorted(stamps)]


def _independent(points: list[Point]) -> tuple[dict[Any, list[float]], dict[Any, list[float]]]:
    """
    Energy and cost per local day and month, counted point by point with
    Python's time zone database.
    """
    zone = ZoneInfo(ZONE)
    kwh_per_blip = 4.0 / 600.0
    days: dict[Any, list[float]] = defaultdict(lambda: [0.0, 0.0])
    months: dict[Any, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for p in points:
        local = datetime.fromtimestamp(p.stamp // 1000, zone)
        if local.weekday() < 5 and 17 <= local.hour < 21:
            price = 3.0
        elif local.hour >= 22 or local.hour < 6:
            price = 1.0
        else:
            price = 2.0
        for bucket, key in ((days, local.date()), (months, (local.year, local.month))):
            bucket[key][0] += kwh_per_blip
            bucket[key][1] += kwh_per_blip * price
    return days, months


@pytest_twisted.ensureDeferred
async def test_energy_of_a_year_matches_an_independent_count(house: Served) -> None:
    """
    For a year of irregular blips in Europe/Copenhagen, kWh and cost per
    day and per month, fetched by local ISO dates, equal a point-by-point
    count in Python: 366 days, 23 hours on 31 March, 25 on 27 October.
    """
    points = _year_of_blips()
    await house.store.insert(points)
    days, months = _independent(points)
    zone = ZoneInfo(ZONE)

    code, _, body = await fetch(house, "/meters/1/energy?from=2024-01-01&to=2025-01-01&period=day")
    assert code == 200 and body["next"] is None
    rows = body["rows"]
    assert len(rows) == 366
    for row in rows:
        start = datetime.fromtimestamp(row["start"] / 1000, zone)
        assert (start.hour, start.minute) == (0, 0)
        expected_kwh, expected_cost = days[start.date()]
        assert row["kwh"] == pytest.approx(expected_kwh, rel=1e-9)
        assert row["cost"] == pytest.approx(expected_cost, rel=1e-9)
    lengths = {datetime.fromtimestamp(r["start"] / 1000, zone).date(): r["end"] - r["start"] for r in rows}
    assert lengths[date(2024, 3, 31)] == 23 * HOUR
    assert lengths[date(2024, 10, 27)] == 25 * HOUR
    assert sorted(set(lengths.values())) == [23 * HOUR, 24 * HOUR, 25 * HOUR]

    code, _, body = await fetch(house, "/meters/1/energy?from=2024-01-01&to=2025-01-01&period=month")
    assert [datetime.fromtimestamp(r["start"] / 1000, zone).month for r in body["rows"]] == list(range(1, 13))
    for month, row in enumerate(body["rows"], start=1):
        expected_kwh, expected_cost = months[(2024, month)]
        assert row["kwh"] == pytest.approx(expected_kwh, rel=1e-9)
        assert row["cost"] == pytest.approx(expected_cost, rel=1e-9)
    year_kwh = sum(months[(2024, m)][0] for m in range(1, 13))
    assert body["total"]["kwh"] == pytest.approx(year_kwh, rel=1e-9)
