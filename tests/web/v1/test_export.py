"""
Tests of the export of every point of a range: a page at a time, each
read only once the client has taken the previous one.
"""

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer

from blip.db.readings import Readings
from blip.db.v1 import V1Queries
from blip.model import Point
from blip.web.v1.export import PAGE, Export
from tests.conftest import within

T0 = 1_700_000_000_000


class SlowRequest:
    """
    Stands in for a request whose connection fills up with every large
    write, making the server pause until the test resumes it.
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.producer: Any = None
        #: Its connection (here: still open).
        self.channel = object()
        self.wrote: Deferred[None] = Deferred()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        if len(data) > 1000:
            self.producer.pauseProducing()
        wrote, self.wrote = self.wrote, Deferred()
        wrote.callback(None)


@pytest_twisted.ensureDeferred
async def test_export_waits_for_the_client(store: Readings) -> None:
    """
    The export writes its head and first page at once, then reads the next
    page only when the client takes more: one page per resume, however
    many there are.
    """
    await store.insert([Point(1, T0 + i, 5) for i in range(PAGE * 3)])
    request = SlowRequest()
    done = Deferred.fromCoroutine(Export(V1Queries(store.pool), 1, T0, T0 + PAGE * 3, True).write_to(request))
    while len(request.writes) < 2:
        await within(request.wrote)
    assert request.writes[0] == b"stamp,ms\r\n"
    assert request.writes[1].count(b"\r\n") == PAGE
    for page in (2, 3):
        await store.ping()
        assert len(request.writes) == page and not done.called
        request.producer.resumeProducing()
        await within(request.wrote)
    request.producer.resumeProducing()
    await within(done)
    assert len(request.writes) == 5 and request.writes[4] == b""
    assert request.producer is None
