"""
Tests of the producer of answers written a piece at a time: it holds what
is sent while the connection pushes back, lets writers wait for it, and
lets go when the client is gone.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from blip.web.backpressure import Backpressure, RequestOutlet


class Answer:
    """Stands in for a request: records what is written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        #: Its connection (open).
        self.channel = type("Channel", (), {"transport": StringTransport()})()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_it_holds_what_comes_while_paused() -> None:
    """
    Pieces sent while the connection pushes back are held, in order, and
    written when it takes more again.
    """
    answer = Answer()
    producer = Backpressure(RequestOutlet(answer))
    assert answer.producer is producer
    assert producer.send(b"a") == 0 and not producer.saturated
    producer.pauseProducing()
    assert producer.saturated
    assert (producer.send(b"b"), producer.send(b"c")) == (1, 2)
    assert answer.written == [b"a"]
    producer.resumeProducing()
    assert answer.written == [b"a", b"b", b"c"] and not producer.saturated


def test_writers_wait_until_the_connection_takes_more() -> None:
    """
    A writer waiting while the connection pushes back goes on once it
    takes more, or once the client is gone; not while it pushes back.
    """
    answer = Answer()
    producer = Backpressure(RequestOutlet(answer))
    assert Deferred.fromCoroutine(producer.ready()).called
    producer.pauseProducing()
    waiting = Deferred.fromCoroutine(producer.ready())
    assert not waiting.called
    producer.resumeProducing()
    assert waiting.called
    producer.pauseProducing()
    waiting = Deferred.fromCoroutine(producer.ready())
    producer.stopProducing()
    assert waiting.called and producer.stopped
    assert Deferred.fromCoroutine(producer.ready()).called


def test_closing_lets_go() -> None:
    """
    Closing drops what is held, lets waiting writers go on and unregisters
    the producer; a waiting writer may also give up.
    """
    answer = Answer()
    producer = Backpressure(RequestOutlet(answer))
    producer.pauseProducing()
    producer.send(b"x")
    given_up = Deferred.fromCoroutine(producer.ready())
    given_up.cancel()
    given_up.addErrback(lambda _: None)
    waiting = Deferred.fromCoroutine(producer.ready())
    producer.close()
    assert waiting.called and answer.producer is None
    producer.resumeProducing()
    assert answer.written == []
