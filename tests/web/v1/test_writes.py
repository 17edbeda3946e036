"""
Tests of the write API (POST /api/v1/meters/<id>/readings) over a real
port against a real database: batches stored as JSON and CSV, once; every
way a token can be wrong, each a counted 401 or 403; every bad batch a 400
naming what is wrong; bodies over the cap refused before they are read;
recent points live and announced, older ones history.
"""

import json
import select
import socket
from typing import Any, Callable

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from blip.db.readings import CHANNEL
from blip.db.tokens import REVOKE
from blip.meters import Meters
from blip.web.limits import WRITE_AHEAD, WRITE_BODY, WRITE_POINTS
from blip.web.v1.openapi import document
from tests.conftest import TIMEOUT, Served, make_token, read_response, wait_until

#: The served site's clock (see open_site), in ms.
NOW = 1_700_000_000_000
PATH = "/api/v1/meters/1/readings"


@pytest.fixture
def site(serve: Callable[..., Served]) -> Served:
    """The whole site for meter 1, its clock at NOW."""
    return serve(Meters())


async def post(
    site: Served, body: bytes, token: Any = None, content_type: str = "application/json",
    path: str = PATH, **headers: str,
) -> tuple[int, Any, Any]:
    """
    POST a batch; check the answer against the OpenAPI document.

    :return: status, headers and decoded body.
    """
    sent = {"Content-Type": content_type, **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    code, received, answer = await site.get(path, sent, method="POST", body=body)
    responses = document()["paths"]["/meters/{id}/readings"]["post"]["responses"]
    assert str(code) in responses, code
    media = received.getRawHeaders(b"Content-Type")[0]
    assert media == (b"application/json" if code == 200 else b"application/problem+json")
    return code, received, json.loads(answer)


def stored(database) -> list[tuple[int, int, int]]:
    """:return: every reading, by meter and stamp."""
    return database.sql("SELECT id, stamp, ms FROM readings ORDER BY id, stamp")


@pytest_twisted.ensureDeferred
async def test_a_batch_is_stored_once(site: Served, database) -> None:
    """
    A JSON batch is stored and counted; sent again, nothing is stored
    twice and the answer says how many were there; a CSV batch (with a
    header) adds to it; the rollups count each point once.
    """
    token = make_token(database, [1])
    batch = [[NOW - 3000, 1000], [NOW - 2000, 1000], [NOW - 1000, 1000]]
    code, _, answer = await post(site, json.dumps(batch).encode(), token)
    assert (code, answer) == (200, {"stored": 3, "duplicates": 0})
    code, _, answer = await post(site, json.dumps(batch).encode(), token)
    assert (code, answer) == (200, {"stored": 0, "duplicates": 3})
    csv = f"stamp,ms\r\n{NOW - 1000},1000\r\n{NOW},1000\r\n\r\n".encode()
    code, _, answer = await post(site, csv, token, "text/csv; charset=utf-8")
    assert (code, answer) == (200, {"stored": 1, "duplicates": 1})
    assert stored(database) == [(1, NOW - 3000 + i * 1000, 1000) for i in range(4)]
    assert database.sql("SELECT sum(events) FROM readings_hourly")[0][0] == 4
    assert site.counters.api_stored == 4
    code, _, answer = await post(site, b"[]", token)
    assert (code, answer) == (200, {"stored": 0, "duplicates": 0})


@pytest_twisted.ensureDeferred
async def test_recent_points_go_live_and_older_ones_are_history(site: Served, database) -> None:
    """
    Points stamped within the live window reach a parked long-poll and are
    announced (NOTIFY) as ingest's writes are; older ones of the same
    batch are stored quietly, and none older than the hub's newest goes
    live again.
    """
    token = make_token(database, [1])
    listening = psycopg2.connect(database.dsn)
    listening.autocommit = True
    try:
        with listening.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        parked = site.hub.wait(1)
        old = NOW - 10 * 60_000
        batch = [[old, 500], [old + 500, 500], [NOW - 1000, 900], [NOW - 100, 900]]
        code, _, _ = await post(site, json.dumps(batch).encode(), token)
        assert code == 200
        first = await parked
        assert (first.stamp, first.ms) == (NOW - 1000, 900)
        assert site.hub.last(1).stamp == NOW - 100

        def announced() -> list[str]:
            listening.poll()
            return [n.payload for n in listening.notifies]

        payloads = await wait_until(announced)
        assert payloads == [f"1:{NOW - 1000},900 900,900"]
    finally:
        listening.close()


@pytest.mark.parametrize(
    "kind, status, detail",
    [
        ("missing", 401, "missing bearer token"),
        ("scheme", 401, "malformed token"),
        ("empty", 401, "malformed token"),
        ("malformed", 401, "malformed token"),
        ("unknown", 401, "unknown token"),
        ("wrong secret", 401, "unknown token"),
        ("revoked", 401, "revoked token"),
        ("another meter's", 403, "may not write meter 1"),
        ("twice", 401, "more than one Authorization header"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_wrong_token_is_refused_and_counted(
    site: Served, database, kind: str, status: int, detail: str
) -> None:
    """
    A token missing, of another scheme, empty, malformed, unknown, with a
    wrong secret, revoked, of another meter, or given twice is refused with
    a 401 (with WWW-Authenticate) or a 403, as problem JSON; nothing is
    stored, and the refusal is counted (and exported as a metric).
    """
    good = make_token(database, [1])
    other = make_token(database, [2])
    headers: dict[str, str] = {}
    ident, _, secret = good.partition(".")
    tokens = {
        "missing": None,
        "malformed": "not-a-token",
        "unknown": "abcdefabcdef." + secret,
        "wrong secret": ident + "." + ("A" if secret[0] != "A" else "B") + secret[1:],
        "revoked": good,
        "another meter's": other,
        "twice": good,
    }
    if kind == "revoked":
        database.sql(REVOKE, (NOW, ident))
    if kind == "scheme":
        headers["Authorization"] = f"Basic {good}"
    elif kind == "empty":
        headers["Authorization"] = "Bearer  "
    elif kind == "twice":
        headers["Authorization"] = f"Bearer {good}"
    token = tokens.get(kind)
    raw = await _post_raw(site, token, headers, twice=kind == "twice")
    code, head, body = raw
    assert code == status
    problem = json.loads(body)
    assert problem["status"] == status and detail in problem["detail"], problem
    assert (b"WWW-Authenticate: Bearer" in head) == (status == 401)
    assert stored(database) == []
    assert site.counters.api_refused == 1
    code, _, metrics = await site.get("/metrics")
    assert b"blip_api_refused_total 1.0" in metrics


async def _post_raw(site: Served, token: Any, headers: dict[str, str], twice: bool) -> tuple[int, bytes, bytes]:
    """POST one point over a raw connection (to send a header twice)."""
    lines = [f"POST {PATH} HTTP/1.1", "Host: blip", "Content-Type: application/json"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    body = json.dumps([[NOW, 1000]]).encode()
    request = ("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    def exchange() -> tuple[int, bytes, bytes]:
        with socket.create_connection(("127.0.0.1", site.port), timeout=TIMEOUT) as s:
            s.sendall(request)
            head, answer = read_response(s)
        return int(head.split(b" ")[1]), head, answer

    return await deferToThread(exchange)


def _bad_batches() -> list[tuple[str, bytes, str]]:
    future = NOW + (WRITE_AHEAD + 1) * 1000
    return [
        ("application/json", b"{not json", "not JSON"),
        ("application/json", b'{"stamp": 1}', "JSON array"),
        ("application/json", b"[[1, 2, 3]]", "point 0: not a pair"),
        ("application/json", b"[[1.5, 2]]", "point 0: not a pair"),
        ("application/json", b"[[true, 2]]", "point 0: not a pair"),
        ("application/json", b'[["1", 2]]', "point 0: not a pair"),
        ("application/json", f"[[{NOW}, 0]]".encode(), "ms must be from 1"),
        ("application/json", f"[[{NOW}, 2147483648]]".encode(), "ms must be from 1"),
        ("application/json", b"[[-5, 10]]", "before 1970"),
        ("application/json", f"[[{NOW}, 5], [{NOW}, 5]]".encode(), "point 1: stamps must strictly increase"),
        ("application/json", f"[[{NOW}, 5], [{NOW - 1}, 5]]".encode(), "strictly increase"),
        ("application/json", f"[[{future}, 5]]".encode(), "ahead of this server's clock"),
        ("application/json", json.dumps([[i, 1] for i in range(1, WRITE_POINTS + 2)]).encode(),
         f"more than {WRITE_POINTS} points"),
        ("text/csv", b"stamp,ms\n1,2\nx,3\n", "line 3: stamp 'x'"),
        ("text/csv", b"1,2,3\n", "line 1: expected 2 fields"),
        ("text/csv", b"\xff\xfe,1\n", "not UTF-8"),
        ("text/csv", "".join(f"{i},1\n" for i in range(1, WRITE_POINTS + 2)).encode(),
         f"more than {WRITE_POINTS} points"),
    ]


@pytest.mark.parametrize("content_type, body, detail", _bad_batches())
@pytest_twisted.ensureDeferred
async def test_every_bad_batch_is_refused_whole(
    site: Served, database, content_type: str, body: bytes, detail: str
) -> None:
    """
    A body that is not a batch of points, or a batch with a point out of
    range, ahead of the clock, not after the one before, or too many
    points, is a 400 naming what is wrong; nothing of it is stored.
    """
    token = make_token(database, [1])
    code, _, problem = await post(site, body, token, content_type)
    assert code == 400
    assert detail in problem["detail"], problem
    assert stored(database) == []


@pytest.mark.parametrize(
    "path, content_type, status",
    [
        (PATH, "text/plain", 415),
        (PATH, "", 415),
        ("/api/v1/meters/x/readings", "application/json", 400),
        ("/api/v1/meters/99999999999/readings", "application/json", 404),
        ("/api/v1/meters/1/power", "application/json", 405),
    ],
)
@pytest_twisted.ensureDeferred
async def test_other_refusals(site: Served, database, path: str, content_type: str, status: int) -> None:
    """
    A body of another media type is a 415, a bad or impossible meter id a
    400 or 404, a POST to a route that takes none a 405: each as problem
    JSON.
    """
    token = make_token(database, [1])
    sent = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    code, headers, body = await site.get(path, sent, method="POST", body=b"[]")
    assert code == status
    assert headers.getRawHeaders(b"Content-Type") == [b"application/problem+json"]
    assert json.loads(body)["status"] == status


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_cap_is_refused_before_it_is_read(site: Served, database) -> None:
    """
    A body announced longer than the cap is refused with 413 (problem
    JSON, no "100 Continue" first) before any of it is sent; one sent in
    chunks is refused the same as soon as it grows past the cap. Nothing is
    stored.
    """
    token = make_token(database, [1])
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: blip\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
    )

    def announced() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", site.port), timeout=TIMEOUT) as s:
            s.sendall(f"{head}Content-Length: {WRITE_BODY + 1}\r\nExpect: 100-continue\r\n\r\n".encode())
            return read_response(s)

    status, body = await deferToThread(announced)
    assert status.startswith(b"HTTP/1.1 413") and b"100 Continue" not in status
    assert b"Content-Type: application/problem+json" in status
    problem = json.loads(body)
    assert (problem["status"], problem["detail"]) == (413, f"request body larger than {WRITE_BODY} bytes")

    def chunked() -> tuple[bytes, bytes, int]:
        chunk = b"[" + b" " * 65534 + b"]"
        sent = 0
        with socket.create_connection(("127.0.0.1", site.port), timeout=TIMEOUT) as s:
            s.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                readable = socket.socket.recv(s, 65536, socket.MSG_DONTWAIT) if _ready(s) else b""
                answer += readable
            s.sendall(b"0\r\n\r\n")
            head_part, _, rest = answer.partition(b"\r\n\r\n")
            return head_part, rest, sent

    status, _, sent = await deferToThread(chunked)
    assert status.startswith(b"HTTP/1.1 413") and b"Content-Type: application/problem+json" in status
    assert sent <= WRITE_BODY + 2 * 65536
    assert stored(database) == []


def _ready(s: socket.socket) -> bool:
    """:return: whether ``s`` has something to read now."""
    return bool(select.select([s], [], [], 0.01)[0])
