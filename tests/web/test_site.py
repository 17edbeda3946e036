"""
Tests of the site: what is refused before any route, which application
answers which path, and, driven by generated requests, that nothing the
daemon serves answers a 500.
"""

import json
from typing import Callable
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blip.meters import Meters
from tests.conftest import Served, exchange


@pytest.mark.parametrize(
    "path, method, status, error",
    [
        ("/since/" + "9" * 9000, "GET", 414, "request target longer than 8192 bytes"),
        ("/%FF", "GET", 400, "path is not UTF-8"),
        ("/last/1", "get", 405, "method not allowed"),
        ("/api/v1/%FF", "GET", 400, "path is not UTF-8"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refusals_before_any_route(
    serve: Callable[..., Served], path: str, method: str, status: int, error: str
) -> None:
    """
    Targets too long, paths that are not UTF-8 and methods not in upper
    case are refused before any route, in the error format of the path's
    API.
    """
    site = serve(Meters(), memory=True)
    code, headers, body = await site.get(path, method=method)
    assert (code, json.loads(body)["error"]) == (status, error)
    modern = path.startswith("/api/v1")
    assert headers.getRawHeaders(b"Content-Type") == [
        b"application/problem+json" if modern else b"application/json"
    ]


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/api/v1/meters", b"application/json"),
        ("/api/nothing", b"application/problem+json"),
        ("/healthz", b"application/json"),
        ("/metrics", b"text/plain"),
        ("/usage/5", b"application/json"),
        ("/index.html", b"text/html"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_each_path_has_its_application(
    serve: Callable[..., Served], path: str, content_type: bytes
) -> None:
    """
    ``/api/...`` is the modern API (its errors problem documents),
    ``/healthz`` and ``/metrics`` the operators', everything else the
    legacy API and the page.
    """
    site = serve(Meters(), memory=True)
    _, headers, _ = await site.get(path)
    assert headers.getRawHeaders(b"Content-Type")[0].startswith(content_type)


T_FUZZ = 1_700_000_000_000
SEGMENTS = st.one_of(
    st.integers(0, 10**22).map(str),
    st.integers(-10**6, -1).map(str),
    st.sampled_from(["", ".", "..", "%", "%zz", "%00", "%FF", "%2F", "%2e%2e", "%20", "+", "1e9",
                     "0x10", "１２", "NaN", "-0", str(T_FUZZ), "9" * 40, "%C0%AF", "%E2%80%AE"]),
    st.text(max_size=12).map(lambda t: quote(t, safe="")),
    st.binary(max_size=8).map(lambda b: "".join(f"%{c:02X}" for c in b)),
)
ROUTES = st.sampled_from(
    ["blip", "last", "since", "range", "aggregate", "aggregate_hourly", "hourly", "minutely",
     "usage", "", "index.html", "api", "nothing", "static", "last/1/2/3/4/5"]
)
REQUESTS = st.builds(
    lambda method, route, segments, query, version: (
        method + b" /" + "/".join([route, *segments]).encode() + query + b" " + version
        + b"\r\nHost: blip\r\nConnection: close\r\n\r\n"
    ),
    st.sampled_from([b"GET", b"GET", b"GET", b"HEAD", b"OPTIONS", b"POST", b"PUT", b"DELETE",
                     b"PATCH", b"TRACE", b"get", b"X"]),
    ROUTES,
    st.lists(SEGMENTS, max_size=5),
    st.sampled_from([b"", b"?", b"?a=1", b"?%ff=%zz", b"?" + b"q" * 100]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/x"]),
)


def test_fuzzed_requests_never_get_a_500(start_daemon, database) -> None:
    """
    Hundreds of generated requests over the legacy routes — any method,
    numbers of any size and sign, percent-encoded junk, empty and dotted
    segments, odd versions — all get an answer below 500 (errors as JSON),
    and the daemon logs no internal error and stops cleanly.
    """
    daemon = start_daemon("--db", database.dsn, "--longpoll-timeout", "0.02")
    daemon.wait_for("database ready")
    database.sql(
        "INSERT INTO readings SELECT 1, %s + i * 1000, 1000 + i FROM generate_series(0, 199) i",
        (T_FUZZ,),
    )
    ok = exchange(daemon.port, b"GET /last/1 HTTP/1.1\r\nHost: blip\r\nConnection: close\r\n\r\n")
    assert ok == (200, b"[%d,1199]" % (T_FUZZ + 199000))

    @settings(
        max_examples=400, deadline=None, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(request=REQUESTS)
    def probe(request: bytes) -> None:
        status, body = exchange(daemon.port, request)
        assert status is not None, request
        assert status < 500, (request, status, body)
        if status >= 400 and not request.startswith(b"HEAD"):
            # Legacy errors are {"error": ...}; /api/v1 ones problem details
            # that carry "error" too.
            assert "error" in json.loads(body), (request, body)

    probe()
    assert daemon.stop() == 0
    assert not [line for line in daemon.output if "Traceback" in line or "error answering" in line]
