"""
Tests of the limits: each route answers up to its limit and no more (or
refuses more), and the OpenAPI document states the same limits.
"""

import json
from typing import Callable

import pytest_twisted

from blip.meters import Meter, Meters
from blip.model import Point
from blip.web.limits import (
    DEFAULT_PERIOD,
    MAX_BUCKETS,
    MAX_MIN_GAP,
    PERIODS,
    POWER_POINTS,
    POWER_POINTS_CAP,
    SINCE_POINTS,
)
from blip.web.v1.openapi import document
from tests.conftest import Served

T0 = 1_700_000_000_000


@pytest_twisted.ensureDeferred
async def test_caps(serve: Callable[..., Served]) -> None:
    """
    /since answers at most 2000 points, oldest first; /aggregate counts at
    most 1000 buckets.
    """
    site = serve(Meters(), memory=True)
    await site.store.insert([Point(5, T0 + i, 1) for i in range(SINCE_POINTS + 100)])
    code, _, content = await site.get(f"/since/5/{T0}")
    rows = content[2:-2].split(b"],[")
    assert len(rows) == SINCE_POINTS == 2000
    assert rows[0] == f"{T0},1".encode()
    assert (await site.get(f"/aggregate/5/{T0}/1/{MAX_BUCKETS}"))[0] == 200
    assert (await site.get(f"/aggregate/5/{T0}/1/{MAX_BUCKETS + 1}"))[0] == 400


@pytest_twisted.ensureDeferred
async def test_power_points(serve: Callable[..., Served]) -> None:
    """
    A power series has at most ``max_points`` rows, 2000 unless asked,
    and ``max_points`` may ask for up to 20000.
    """
    site = serve(Meters([Meter(1)]), memory=True)
    await site.store.insert([Point(1, T0 + i * 10, 10) for i in range(POWER_POINTS + 1)])
    span = f"from={T0}&to={T0 + 10 * (POWER_POINTS + 1)}"
    code, _, body = await site.get(f"/api/v1/meters/1/power?{span}")
    assert json.loads(body)["resolution_ms"] > 0
    code, _, body = await site.get(f"/api/v1/meters/1/power?{span}&max_points={POWER_POINTS + 1}")
    assert (json.loads(body)["resolution_ms"], len(json.loads(body)["points"])) == (0, POWER_POINTS + 1)
    code, _, _ = await site.get(f"/api/v1/meters/1/power?{span}&max_points={POWER_POINTS_CAP}")
    assert code == 200
    code, _, _ = await site.get(f"/api/v1/meters/1/power?{span}&max_points={POWER_POINTS_CAP + 1}")
    assert code == 400


def test_the_document_states_the_limits() -> None:
    """
    The OpenAPI document gives the limits and choices the routes enforce.
    """
    paths = document()["paths"]

    def parameter(path: str, name: str) -> dict:
        return next(p for p in paths[path]["get"]["parameters"] if p.get("name") == name)["schema"]

    power = parameter("/meters/{id}/power", "max_points")
    assert (power["default"], power["maximum"]) == (POWER_POINTS, POWER_POINTS_CAP)
    period = parameter("/meters/{id}/energy", "period")
    assert (period["enum"], period["default"]) == (list(PERIODS), DEFAULT_PERIOD)
    assert parameter("/meters/{id}/gaps", "min_gap")["maximum"] == MAX_MIN_GAP
    assert "At most 10000 rows" in paths["/meters/{id}/energy"]["get"]["description"]
    assert "At most 10000 gaps" in paths["/meters/{id}/gaps"]["get"]["description"]
