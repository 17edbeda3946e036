"""
Tests of the legacy routes through the daemon's own site, against a real
database: byte-exact JSON for every route, over a real port and in memory.
"""

from typing import Callable

import pytest
import pytest_twisted

from blip.meters import Meter, Meters
from blip.model import Point
from tests.conftest import Served

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
NOW = (T0 + 2 * HOUR) / 1000
#: Meter 1's points.
METER1 = [(T0 + i * 1000, 1000 + i) for i in range(10)]


def pairs(rows: list[tuple[int, int]]) -> bytes:
    """The original's encoding of a list of pairs, written out by hand."""
    return ("[" + ",".join(f"[{a},{b}]" for a, b in rows) + "]").encode()


async def legacy_site(serve: Callable[..., Served], memory: bool = False) -> Served:
    """
    The site over a database where meter 1 has 10 points a second apart
    from T0, and meter 2 one point; meter 3 is configured but has no
    readings; now is two hours after T0.
    """
    site = serve(Meters([Meter(1), Meter(3)]), now=NOW, longpoll_timeout=5.0, memory=memory)
    await site.store.insert([Point(1, s, ms) for s, ms in METER1] + [Point(2, T0, 42)])
    return site


EXACT = [
    ("/last", pairs([METER1[-1]])[1:-1]),
    ("/last/1", pairs([METER1[-1]])[1:-1]),
    ("/last/2", f"[{T0},42]".encode()),
    ("/since/" + str(T0 + 7000), pairs(METER1[7:])),
    ("/since/1/" + str(T0 + 7000), pairs(METER1[7:])),
    ("/since/2/" + str(T0 + 1), b"[]"),
    ("/range/" + f"{T0 + 2000}/{T0 + 4000}", pairs(METER1[2:5])),
    ("/range/1/" + f"{T0 + 2000}/{T0 + 4000}", pairs(METER1[2:5])),
    ("/range/1/" + f"{T0}/{T0}", pairs(METER1[:1])),
    ("/aggregate/" + f"{T0 + 500}/3000/2", b"[[0,3],[3000,3]]"),
    ("/aggregate/1/" + f"{T0 - 2000}/4000/3", b"[[0,2],[4000,4],[8000,4]]"),
    ("/aggregate/1/" + f"{T0 - 100000}/1000/10", b"[]"),
    ("/aggregate/1/" + f"{T0}/1/0", b"[]"),
    ("/hourly/" + f"{T0}/{T0 + HOUR}", f"[[{T0},10,{3600000 * 10 / sum(range(1000, 1010))!r},1000,1009]]".encode()),
    ("/hourly/2/" + f"{T0}/{T0}", f"[[{T0},1,{3600000 / 42!r},42,42]]".encode()),
    ("/minutely/1/" + f"{T0}/{T0}", f"[[{T0},10,{3600000 * 10 / sum(range(1000, 1010))!r},1000,1009]]".encode()),
    ("/aggregate_hourly/2/" + f"{T0}/{2 * HOUR}/2", f"[[0,{3600000 / 42!r}]]".encode()),
    ("/usage/1/" + str(int(NOW * 1000) - T0 - 5000), b"[5]"),
    ("/usage/7/1000", b"[0]"),
    ("/last/1/" + str(int(NOW * 1000) - T0 - 8000), pairs(METER1[8:])),
    # A number no meter has: the single-meter original's last n ms.
    ("/last/" + str(int(NOW * 1000) - T0 - 8000), pairs(METER1[8:])),
    ("/last/5", b"[]"),
]


@pytest.mark.parametrize("memory", [False, True], ids=["socket", "memory"])
@pytest.mark.parametrize("path, body", EXACT)
@pytest_twisted.ensureDeferred
async def test_routes_answer_byte_for_byte(
    serve: Callable[..., Served], path: str, body: bytes, memory: bool
) -> None:
    """
    Every legacy route, with and without a meter id, answers the original's
    bytes for the same points (HEAD: its headers), over a real port and in
    memory alike.
    """
    site = await legacy_site(serve, memory)
    code, headers, content = await site.get(path)
    assert (code, content) == (200, body)
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert headers.getRawHeaders(b"Content-Length") == [str(len(body)).encode()]
    code, headers, content = await site.get(path, method="HEAD")
    assert (code, content) == (200, b"")


@pytest_twisted.ensureDeferred
async def test_whole_numbers_print_as_postgresql_does(serve: Callable[..., Served]) -> None:
    """
    A power that is a whole number prints without ``.0``, as PostgreSQL
    (and so the original) prints it.
    """
    site = await legacy_site(serve, memory=True)
    await site.store.insert([Point(4, T0 + HOUR, 1000), Point(4, T0 + HOUR + 1000, 1000)])
    code, _, content = await site.get(f"/hourly/4/{T0}/{T0 + HOUR}")
    assert content == f"[[{T0 + HOUR},2,3600,1000,1000]]".encode()


@pytest_twisted.ensureDeferred
async def test_last_of_n_says_since_when_raw_points_are_kept(serve: Callable[..., Served]) -> None:
    """
    The single-meter ``/last/<ms>`` answers raw points, and says since when
    they are kept, as ``/last/<id>/<ms>`` does; ``/last/<id>`` of a meter
    known only to the database answers its last point, which needs no such
    header.
    """
    site = serve(Meters([Meter(1)]), now=NOW, memory=True, raw_since=lambda: T0 - HOUR)
    await site.store.insert([Point(1, s, ms) for s, ms in METER1] + [Point(2, T0, 42)])
    span = int(NOW * 1000) - T0 - 8000
    for path in (f"/last/{span}", f"/last/1/{span}"):
        code, headers, content = await site.get(path)
        assert (code, content) == (200, pairs(METER1[8:]))
        assert headers.getRawHeaders(b"Blip-Raw-Since") == [str(T0 - HOUR).encode()]
    code, headers, content = await site.get("/last/2")
    assert (code, content) == (200, f"[{T0},42]".encode())
    assert not headers.hasHeader(b"Blip-Raw-Since")
