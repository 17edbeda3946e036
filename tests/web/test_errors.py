"""
Tests of the one error table and its answers: each kind of error gets its
status and message, as ``{"error": ...}`` on the legacy routes and as a
problem document under /api/v1; an answer already under way is cut short.
"""

import json
import uuid
from typing import TYPE_CHECKING, Callable

import psycopg2
import psycopg2.errors
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel, DummyRequest
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as NoRoute

from blip.db.pool import Pool
from blip.db.readings import Readings
from blip.live.hub import TooManyWaiters
from blip.meters import Meter, Meters
from blip.model import Point
from blip.web.answers import LEGACY, V1
from blip.web.errors import (
    BadRequest,
    Busy,
    NotFound,
    answer_error,
    describe,
    problem,
    refuse,
)
from tests.conftest import Served

if TYPE_CHECKING:
    from tests.conftest import TestCluster

T0 = 1_700_000_000_000


@pytest.mark.parametrize(
    "error, status, message",
    [
        (BadRequest("bad"), 400, "bad"),
        (NotFound("gone"), 404, "gone"),
        (Busy("full"), 503, "full"),
        (NoRoute(), 404, "no such route"),
        (MethodNotAllowed(), 405, "method not allowed"),
        (TooManyWaiters(), 503, "too many long-poll clients; try again later"),
        (psycopg2.OperationalError("down"), 503, "database unavailable; try again later"),
        (psycopg2.errors.UndefinedTable(), 503, "database not prepared yet; try again later"),
        (CancelledError(), 503, "shutting down"),
        (KeyError("bug"), 500, "internal error"),
    ],
)
def test_the_table(error: BaseException, status: int, message: str) -> None:
    """
    Each kind of error has its status and message; anything else is a bug
    (500).
    """
    assert describe(Failure(error)) == (status, message)


def test_legacy_and_problem_bodies() -> None:
    """
    Outside /api/v1 an error is ``{"error": message}``; under it, a problem
    document whose ``error`` repeats its ``detail``; HEAD gets the headers
    alone.
    """
    legacy = DummyRequest([b"since"])
    legacy.path = b"/since/x"
    assert refuse(legacy, 400, "bad") == b'{"error":"bad"}'
    assert legacy.responseCode == 400
    assert legacy.responseHeaders.getRawHeaders(b"Content-Type") == [b"application/json"]
    modern = DummyRequest([b"api"])
    modern.path = b"/api/v1/meters"
    assert json.loads(refuse(modern, 404, "unknown meter 4")) == {
        "type": "about:blank", "title": "Not Found", "status": 404,
        "detail": "unknown meter 4", "error": "unknown meter 4",
    }
    assert modern.responseHeaders.getRawHeaders(b"Content-Type") == [b"application/problem+json"]
    assert json.loads(problem(599, "odd"))["title"] == "Error"
    head = DummyRequest([b"since"])
    head.method = b"HEAD"
    assert refuse(head, 400, "bad") == b""
    assert head.responseHeaders.getRawHeaders(b"Content-Length") == [b"15"]


def test_answers_carry_their_apis_headers(log_events: EventLoggingObserver) -> None:
    """
    An error answered for an API carries its CORS headers (and /api/v1's
    Allow on 405) and its kind of body, whatever the path; a bug is logged
    with its traceback.
    """
    log = Logger()
    request = DummyRequest([b"api"])
    request.path = b"/api"
    body = answer_error(request, Failure(MethodNotAllowed()), log, V1)
    assert json.loads(body or b"")["status"] == 405
    assert request.responseHeaders.getRawHeaders(b"Allow") == [b"GET, HEAD, OPTIONS"]
    assert request.responseHeaders.getRawHeaders(b"Access-Control-Allow-Headers") == [
        b"origin, x-requested-with, accept, last-event-id"
    ]
    request = DummyRequest([b"last"])
    request.path = b"/last/1/x"
    try:
        raise KeyError("bug")
    except KeyError:
        body = answer_error(request, Failure(), log, LEGACY)
    assert (request.responseCode, body) == (500, b'{"error":"internal error"}')
    assert not request.responseHeaders.hasHeader(b"Allow")
    assert [e for e in log_events if e.get("log_failure") is not None]


def test_an_answer_under_way_is_cut_short(log_events: EventLoggingObserver) -> None:
    """
    An error after the answer's head was written cuts the connection (the
    client sees a truncated answer, not a complete one), and is logged.
    """
    channel = DummyChannel()
    channel.transport = StringTransport()
    request = Request(channel)
    request.method, request.clientproto, request.uri = b"GET", b"HTTP/1.1", b"/api/v1/live"
    request.write(b"[")
    written = channel.transport.value()
    assert answer_error(request, Failure(Busy("gone")), Logger(), V1) is None
    assert channel.transport.disconnecting
    assert channel.transport.value() == written
    assert [e for e in log_events if "cut short" in e.get("log_format", "")]


ERRORS = [
    ("/since/1/1234567890123456", 400),
    ("/since/1234567890123456", 400),
    ("/last/1/1234567890123456", 400),
    ("/aggregate/1/1/1/1001", 400),
    ("/aggregate_hourly/1/1/1/1001", 400),
    ("/aggregate/1/1/0/10", 400),
    ("/since/1/abc", 400),
    ("/since/1/-5", 400),
    ("/since/x/5", 400),
    ("/since/1/%C2%B2", 400),
    ("/range/1/5/4", 400),
    ("/hourly/1/5/4", 400),
    ("/minutely/1/5/4", 400),
    ("/last/3", 404),
    # No meter has such an id: the single-meter original's last n ms.
    ("/last/99999999999", 200),
    ("/last/1234567890123456", 400),
    ("/blip/7", 404),
    ("/blip/99999999999", 404),
    ("/nothing/here", 404),
    ("/since/1/2/3/4", 404),
    ("/last/", 404),
    ("/%FF", 400),
    ("/since/" + "9" * 9000, 414),
    ("/since/" + "9" * 15000, 414),
    ("/since/1/%00", 400),
    ("/since/1/%31%32", 200),
    ("/range/1/%2F/5", 404),
    ("/last/%2e%2e", 400),
    ("/hourly/1/%E2%80%AE/1", 400),
    ("/last/1/9999999999999999999999", 400),
    ("/aggregate/1/1/999999999999999/1000", 200),
]


@pytest.mark.parametrize("path, status", ERRORS)
@pytest_twisted.ensureDeferred
async def test_errors_are_json(serve: Callable[..., Served], path: str, status: int) -> None:
    """
    Bad numbers, caps, reversed ranges, unknown meters, unknown routes,
    percent-encoded junk and long targets answer their status with a JSON
    body saying what is wrong (percent-encoded digits are digits).
    """
    site = serve(Meters([Meter(1), Meter(3)]))
    await site.store.insert([Point(1, T0, 1000)])
    code, headers, content = await site.get(path)
    assert code == status
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    if status != 200:
        assert set(json.loads(content)) == {"error"}


@pytest_twisted.ensureDeferred
async def test_unsupported_method_is_405_json(serve: Callable[..., Served]) -> None:
    """
    A POST to an API route is 405 with a JSON body.
    """
    site = serve(Meters(), memory=True)
    for path in ("/last/1", "/blip", "/since/1/5"):
        code, _, content = await site.get(path, method="POST")
        assert (code, content) == (405, b'{"error":"method not allowed"}')


@pytest_twisted.ensureDeferred
async def test_a_database_without_the_schema_is_503(
    serve: Callable[..., Served], pg_cluster: "TestCluster"
) -> None:
    """
    Before the schema exists (a web node on a database no node has
    prepared yet), the routes that read the database answer 503 JSON,
    not 500.
    """
    from twisted.internet import reactor

    name = "t_" + uuid.uuid4().hex[:16]
    pg_cluster.sql("postgres", f"CREATE DATABASE {name}")
    pool = Pool(pg_cluster.dsn(name), 1, reactor)
    await pool.start()
    try:
        site = serve(Meters(), database=Readings(pool))
        for path in ("/since/1/0", "/last/1", "/hourly/1/0/5"):
            code, _, content = await site.get(path)
            assert code == 503, path
            assert b"not prepared" in content
    finally:
        pool.close()
        pg_cluster.sql("postgres", f"DROP DATABASE {name} WITH (FORCE)")
