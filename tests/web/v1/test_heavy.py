"""
Tests of the cap on heavy requests of /api/v1 (exports over more than a
week, live streams while they replay) and of how far back a live stream
may resume, over a real port: beyond the heavy requests that may run at
once, 503 with Retry-After; other requests are never refused.
"""

import json
from typing import Callable

import psycopg2
import pytest_twisted
from twisted.internet.defer import Deferred

from blip.meters import Meters
from blip.model import Point
from blip.web.limits import HEAVY_REQUESTS, HEAVY_SPAN, REPLAY_DEPTH, RETRY_AFTER
from tests.conftest import Served, wait_until
from tests.web.v1.test_live import subscribe

NOW = 1_700_000_000_000


@pytest_twisted.ensureDeferred
async def test_heavy_requests_beyond_the_cap_are_refused(
    serve: Callable[..., Served], database
) -> None:
    """
    While as many heavy requests run as may (exports over more than a
    week, held up by a lock on the readings), another one (an export, a
    resumed live stream) gets 503 with Retry-After at once, while others
    (gaps of a year or a day, an export of a week, a page of a longer
    range's first points, as a peer logger asks for) wait their turn;
    once they are done, a heavy request runs again.
    """
    site = serve(Meters(), now=NOW / 1000)
    await site.store.insert([Point(1, NOW - HEAVY_SPAN - 1000, 1000), Point(1, NOW - 1000, 1000)])
    export = f"/api/v1/meters/1/readings?from={NOW - HEAVY_SPAN - 1}&to={NOW}"
    holder = psycopg2.connect(database.dsn)
    try:
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
            running = [Deferred.fromCoroutine(site.get(export)) for _ in range(HEAVY_REQUESTS)]
            others = [
                Deferred.fromCoroutine(site.get(path))
                for path in (
                    f"/api/v1/meters/1/gaps?from={NOW - 365 * 86_400_000}&to={NOW}",
                    f"/api/v1/meters/1/gaps?from={NOW - 86_400_000}&to={NOW}",
                    f"/api/v1/meters/1/readings?from={NOW - HEAVY_SPAN}&to={NOW}",
                    f"/api/v1/meters/1/readings?from={NOW - HEAVY_SPAN - 1}&to={NOW}&limit=5000",
                )
            ]

            def waiting() -> int:
                return database.sql(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'readings'::regclass AND NOT granted"
                )[0][0]

            # The pool's three connections wait for the lock; the others
            # wait for a connection.
            await wait_until(lambda: waiting() == 3)
            for path, headers in (
                (export, {}),
                ("/api/v1/live", {"Accept": "text/event-stream", "Last-Event-ID": str(NOW - 1000)}),
            ):
                code, answer, body = await site.get(path, headers)
                assert code == 503, path
                assert answer.getRawHeaders(b"Retry-After") == [b"%d" % RETRY_AFTER]
                assert "try again in 2 s" in json.loads(body)["detail"]
        holder.rollback()
        for request in [*running, *others]:
            code, _, body = await request
            assert code == 200, body
    finally:
        holder.close()
    assert (await site.get(export))[0] == 200


@pytest_twisted.ensureDeferred
async def test_a_stream_resumes_an_hour_back_at_most(serve: Callable[..., Served]) -> None:
    """
    A live stream resumes from a Last-Event-ID an hour old (and replays
    what followed it); an older one is a 400 naming the header and the
    limit. A stream is heavy only while it replays: once streams have
    caught up, heavy requests run.
    """
    site = serve(Meters(), now=NOW / 1000)
    await site.store.insert([Point(1, NOW - REPLAY_DEPTH + 1, 1000), Point(1, NOW - 10, 1000)])
    code, _, body = await site.get(
        "/api/v1/live", {"Accept": "text/event-stream", "Last-Event-ID": str(NOW - REPLAY_DEPTH - 1)}
    )
    assert code == 400
    assert json.loads(body)["detail"] == (
        f"Last-Event-ID: a stream resumes at most {REPLAY_DEPTH} ms (60 minutes) back;"
        " open it without Last-Event-ID"
    )
    readers = []
    for _ in range(HEAVY_REQUESTS):
        code, _, reader = await subscribe(site, "?meters=1", NOW - REPLAY_DEPTH)
        assert code == 200
        assert [e.data["stamp"] for e in await reader.take(2)] == [NOW - REPLAY_DEPTH + 1, NOW - 10]
        readers.append(reader)
    try:
        export = f"/api/v1/meters/1/readings?from={NOW - HEAVY_SPAN - 1}&to={NOW}"
        assert (await site.get(export))[0] == 200
    finally:
        for reader in readers:
            reader.close()
