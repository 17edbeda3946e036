"""
Tests of :mod:`blip.common.lifecycle`.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from blip.common.lifecycle import AfterReady, Sequence


def test_sequence_stops_one_after_another_in_reverse() -> None:
    """
    A later service stops first, and the one before it only once that stop
    has finished.
    """
    order: list[str] = []
    gates: dict[str, Deferred[None]] = {}

    class Step(Service):
        def __init__(self, name: str) -> None:
            self.setName(name)

        def stopService(self) -> "Deferred[None]":
            super().stopService()
            order.append(self.name)
            gates[self.name] = Deferred()
            return gates[self.name]

    top = Sequence()
    for name in ("first", "second"):
        Step(name).setServiceParent(top)
    top.startService()
    stopped = top.stopService()
    assert order == ["second"]
    gates["second"].callback(None)
    assert order == ["second", "first"]
    gates["first"].callback(None)
    assert stopped.called


def test_after_ready_opens_at_once_starts_when_ready_and_stops() -> None:
    """
    ``opening`` runs when the service starts, ``start`` once ready fires,
    and the stop waits for ``stop``.
    """
    ready: Deferred[None] = Deferred()
    calls: list[str] = []
    stopping: Deferred[None] = Deferred()

    def stop() -> "Deferred[None]":
        calls.append("stop")
        return stopping

    service = AfterReady(
        "part", lambda: ready, lambda: calls.append("start"), stop, lambda: calls.append("open")
    )
    service.startService()
    assert calls == ["open"]
    ready.callback(None)
    assert calls == ["open", "start"]
    stopped = service.stopService()
    assert calls[-1] == "stop" and not stopped.called
    stopping.callback(None)
    assert stopped.called


def test_after_ready_stopped_before_ready_never_starts() -> None:
    """
    A stop before the component could start cancels the wait: it never
    starts.
    """
    ready: Deferred[None] = Deferred()
    calls: list[str] = []
    service = AfterReady("part", lambda: ready, lambda: calls.append("start"))
    service.startService()
    assert service.stopService().called
    assert calls == []
