"""
When a logger was listening, and when none was: the record of ingest
periods (see :mod:`blip.ingest.periods`) turned into the stretches of a
range when ingest ran with its source open (``idle``, for a silence of the
meter), when none did (``logger_down``), before the first record of ingest
(``unknown``), and when this node's logger was down but a peer logger's
points fill the stretch (``repaired``, see :mod:`blip.remote.repair`).

The gaps of ``/api/v1`` classify the silences of a meter this way; the
repair of gaps from a peer looks for the ``logger_down`` stretches.
"""

from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence

from blip.db.node_state import IngestPeriods
from blip.db.repairs import Repair
from blip.ingest.periods import ALIVE_INTERVAL

#: An open period of ingest refreshed this recently is of a node that runs:
#: it lasts until now.
FRESH = int(2.5 * ALIVE_INTERVAL * 1000)

LOGGER_DOWN, IDLE, UNKNOWN, REPAIRED = "logger_down", "idle", "unknown", "repaired"


@dataclass(frozen=True, slots=True)
class Stretch:
    """
    A stretch of time, in unix ms, and what was listening during it.

    :param start: when it starts.
    :param end: when it ends.
    :param kind: ``logger_down`` when no ingest was listening, ``idle`` when
        one was, ``unknown`` before the first record of ingest,
        ``repaired`` when no ingest was listening and a peer's points fill
        the stretch.
    :param peer: the peer of a ``repaired`` stretch.
    """

    start: int
    end: int
    kind: str
    peer: Optional[str] = None


class Downtime:
    """
    Splits stretches of time by the record of ingest periods of every node.

    :param periods: the record.
    """

    def __init__(self, periods: IngestPeriods) -> None:
        self.periods = periods

    async def split(self, spans: Sequence[tuple[int, int]], now: int) -> list[Stretch]:
        """
        :param spans: sorted, disjoint ``(start, end)`` stretches.
        :param now: the current time (an open period of a node that runs
            lasts until now).
        :return: each span split into its ``idle``, ``logger_down`` and
            ``unknown`` parts, in order.
        """
        if not spans:
            return []
        periods = await self.periods.ingest_periods(spans[0][0], spans[-1][1], now, FRESH)
        listening = union([(int(a), int(b)) for a, b in periods])
        # Before the first record of ingest nothing says whether a logger
        # ran; a listening period from before the spans is one.
        recorded: Optional[int] = spans[0][0]
        if not listening or listening[0][0] > spans[0][0]:
            recorded = await self.periods.first_ingest()
        parts: list[Stretch] = []
        for a, b in spans:
            parts.extend(unrecorded(classify(a, b, listening), recorded))
        return parts


def union(periods: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """
    :return: the union of ``periods``, as sorted disjoint stretches.
    """
    merged: list[tuple[int, int]] = []
    for start, end in sorted(periods):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def classify(start: int, end: int, listening: list[tuple[int, int]]) -> list[Stretch]:
    """
    Split ``[start, end)`` into the parts inside ``listening`` (sorted,
    disjoint), ``idle``, and outside it, ``logger_down``.
    """
    parts: list[Stretch] = []
    at = start
    for lo, hi in listening:
        if hi <= at or hi <= lo:
            continue
        if lo >= end:
            break
        if lo > at:
            parts.append(Stretch(at, lo, LOGGER_DOWN))
            at = lo
        covered = min(hi, end)
        parts.append(Stretch(at, covered, IDLE))
        at = covered
        if at >= end:
            break
    if at < end:
        parts.append(Stretch(at, end, LOGGER_DOWN))
    return parts


def unrecorded(parts: list[Stretch], recorded: Optional[int]) -> list[Stretch]:
    """
    :return: ``parts``, with what is ``logger_down`` before ``recorded``
        (the first record of ingest; None: there is none) ``unknown``.
    """
    split: list[Stretch] = []
    for part in parts:
        if part.kind != LOGGER_DOWN or (recorded is not None and part.start >= recorded):
            split.append(part)
        elif recorded is None or part.end <= recorded:
            split.append(replace(part, kind=UNKNOWN))
        else:
            split += [Stretch(part.start, recorded, UNKNOWN), Stretch(recorded, part.end, LOGGER_DOWN)]
    return split


def repaired(parts: list[Stretch], repairs: Sequence[Repair]) -> list[Stretch]:
    """
    :param parts: sorted, disjoint.
    :param repairs: sorted by start, disjoint.
    :return: ``parts``, with what is ``logger_down`` inside a repaired
        stretch ``repaired``, naming its peer.
    """
    split: list[Stretch] = []
    first = 0
    for part in parts:
        # Repairs that end before this part end before every later one.
        while first < len(repairs) and repairs[first].end <= part.start:
            first += 1
        if part.kind != LOGGER_DOWN:
            split.append(part)
            continue
        at = part.start
        for repair in repairs[first:]:
            if repair.start >= part.end:
                break
            lo, hi = max(repair.start, at), min(repair.end, part.end)
            if lo >= hi:
                continue
            if lo > at:
                split.append(Stretch(at, lo, LOGGER_DOWN))
            split.append(Stretch(lo, hi, REPAIRED, repair.peer))
            at = hi
        if at < part.end:
            split.append(Stretch(at, part.end, LOGGER_DOWN))
    return split
