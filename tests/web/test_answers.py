"""
Tests of how answers are dressed: every route of both APIs answers
OPTIONS with its CORS headers alone and carries them (and the cache
headers) on GET; JSON is written one way.
"""

import math
from typing import Callable

import pytest
import pytest_twisted

from blip.meters import Meter, Meters
from blip.model import Point
from blip.web.answers import LEGACY, V1, encode
from tests.conftest import Served

LEGACY_PATHS = [
    "/last", "/last/1", "/last/1/100", "/since/1", "/since/1/1", "/range/1/2", "/range/1/1/2",
    "/aggregate/1/2/3", "/aggregate/1/1/2/3", "/aggregate_hourly/1/2/3", "/aggregate_hourly/1/1/2/3",
    "/hourly/1/2", "/hourly/1/1/2", "/minutely/1/2", "/minutely/1/1/2", "/usage/5", "/usage/1/5",
    "/blip", "/blip/1",
]
EXPECTED = {
    b"Access-Control-Allow-Origin": [b"*"],
    b"Access-Control-Allow-Methods": [b"GET"],
    b"Access-Control-Allow-Headers": [b"origin, x-requested-with, accept"],
    b"Access-Control-Max-Age": [b"60"],
    b"Cache-Control": [b"max-age=0, must-revalidate"],
}


@pytest.mark.parametrize("path", LEGACY_PATHS)
@pytest_twisted.ensureDeferred
async def test_headers_and_options(serve: Callable[..., Served], path: str) -> None:
    """
    Every API route answers OPTIONS with the CORS headers, and carries them
    and the cache headers on GET too.
    """
    site = serve(Meters([Meter(1)]), memory=True)
    await site.store.insert([Point(1, 1_700_000_000_000, 1000)])
    code, headers, content = await site.get(path, method="OPTIONS")
    assert (code, content) == (200, b"")
    assert headers.getRawHeaders(b"Content-Length") == [b"0"]
    assert not headers.hasHeader(b"Content-Type") and not headers.hasHeader(b"Transfer-Encoding")
    assert not headers.hasHeader(b"Allow")
    for name, value in EXPECTED.items():
        assert headers.getRawHeaders(name) == value
    if not path.startswith("/blip"):
        code, headers, _ = await site.get(path)
        for name, value in EXPECTED.items():
            assert headers.getRawHeaders(name) == value


def test_both_apis_share_their_headers() -> None:
    """
    /api/v1 sends the legacy routes' CORS and caching headers, but for
    also letting a page send ``Last-Event-ID``.
    """
    legacy, modern = dict(LEGACY.headers), dict(V1.headers)
    allowed = b"Access-Control-Allow-Headers"
    assert modern.pop(allowed) == legacy.pop(allowed) + b", last-event-id"
    assert modern == legacy
    assert [name for name, _ in LEGACY.headers] == [name for name, _ in V1.headers]


def test_json_is_compact_and_finite() -> None:
    """
    JSON answers have no spaces, and a number JSON cannot hold is an
    error rather than an answer no client can read.
    """
    assert encode({"a": [1, 2.5, None]}) == b'{"a":[1,2.5,null]}'
    with pytest.raises(ValueError):
        encode({"watts": math.inf})
