"""
Tests of forwarding's sink: a central blipserver's write API (the whole
site, served on a real port over a real database) takes this node's
points, each meter's in order and in batches, once.
"""

from typing import Callable

import pytest
import pytest_twisted
from twisted.internet import reactor

from blip.counters import Counters
from blip.db.tokens import REVOKE
from blip.meters import Meters
from blip.model import Point
from blip.remote.client import Client, RemoteRefused
from blip.remote.upstream import POST_POINTS, Upstream
from blip.web.limits import WRITE_POINTS
from tests.conftest import Served, make_token

NOW = 1_700_000_000_000


@pytest.fixture
def central(serve: Callable[..., Served]) -> Served:
    """The central server's site, its clock at NOW."""
    return serve(Meters())


@pytest_twisted.ensureDeferred
async def test_points_reach_the_central_server_once(central: Served, database) -> None:
    """
    A batch of two meters' points, one meter's longer than a request
    holds, is stored there in full and counted; sent again it stores
    nothing and says so; the central server's newest points come back;
    with the token revoked, sending fails as refused and is counted.
    """
    assert POST_POINTS <= WRITE_POINTS
    token = make_token(database, [1, 2])
    counters = Counters()
    client = Client(reactor, central.url, token)
    upstream = Upstream(client, counters)
    try:
        ones = [Point(1, NOW - 20_000_000 + i * 1000, 1000) for i in range(POST_POINTS + 10)]
        twos = [Point(2, NOW - 20_000_000 + i * 7000, 7000) for i in range(5)]
        batch = sorted(ones + twos, key=lambda p: p.stamp)
        assert await upstream.insert(batch) == len(batch)
        rows = database.sql("SELECT id, stamp, ms FROM readings ORDER BY stamp, id")
        assert rows == [(p.meter, p.stamp, p.ms) for p in sorted(batch, key=lambda p: (p.stamp, p.meter))]
        assert (counters.forwarded, counters.forward_failures) == (len(batch), 0)
        assert await upstream.insert(batch[-3:]) == 0
        last = {p.meter: p for p in await upstream.last_points()}
        assert (last[1], last[2]) == (ones[-1], twos[-1])
        database.sql(REVOKE, (NOW, token.partition(".")[0]))
        with pytest.raises(RemoteRefused, match="401: revoked token"):
            await upstream.insert([Point(1, NOW, 1000)])
        assert counters.forward_failures == 1
    finally:
        await client.close()
