"""
Services that order the daemon's life: children stopped one after another,
components started once what they need (the database) is ready, and a stop
on a signal that exits with the right status.
"""

import atexit
import os
import signal
import sys
from typing import Any, Callable, Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python.failure import Failure


class Sequence(MultiService):
    """
    Starts its services in the order they were added and stops them in the
    reverse order, each one after the previous has finished stopping (a
    plain MultiService stops them all at once).
    """

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)

        async def stop_all() -> None:
            for service in reversed(list(self)):
                await maybeDeferred(service.stopService)

        return Deferred.fromCoroutine(stop_all())


Step = Callable[[], Any]


async def _run(step: Step) -> None:
    result = step()
    if hasattr(result, "__await__"):
        await result


class AfterReady(Service):
    """
    Runs a component: ``opening`` at once when the daemon starts, ``start``
    once ``ready`` fires (the database prepared), and ``stop`` when the
    daemon stops; a stop before ``ready`` fired cancels the wait (and a
    ``start`` under way).

    :param name: what the component is, for the log (``ingest``).
    :param ready: returns a Deferred that fires when the component may start.
    :param start: starts it; may return an awaitable.
    :param stop: stops it; may return an awaitable, which the stop waits for.
    :param opening: what it does before it may start (take over its state).
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        ready: Callable[[], "Deferred[None]"],
        start: Step,
        stop: Optional[Step] = None,
        opening: Optional[Step] = None,
    ) -> None:
        self.setName(name)
        self.ready = ready
        self.start = start
        self.stop = stop
        self.opening = opening
        self._starting: Optional[Deferred[None]] = None

    def startService(self) -> None:
        super().startService()
        if self.opening is not None:
            self.opening()

        async def start() -> None:
            await self.ready()
            await _run(self.start)

        self._starting = Deferred.fromCoroutine(start())
        self._starting.addErrback(self._failed)

    def _failed(self, f: Failure) -> None:
        if not f.check(CancelledError):
            self.log.failure("{name} cannot start", f, name=self.name)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        if self.stop is None:
            return Deferred.fromCoroutine(_nothing())
        return Deferred.fromCoroutine(_run(self.stop))


async def _nothing() -> None:
    return None


class CleanExit(Service):
    """
    Makes SIGTERM and SIGINT stop the daemon with exit status 0 once it has
    shut down in order (twistd otherwise ends by re-raising the signal, so
    a clean stop would look like a kill).
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._stop)

    def _stop(self, number: int, frame: Any) -> None:
        self.log.info("received {name}, stopping", name=signal.Signals(number).name)
        self.reactor.callFromThread(self.reactor.stop)

    def fail(self) -> None:
        """
        Stop the daemon in order and make it exit with status 1, so that
        whoever runs it (a shell, systemd) sees that it failed. twistd
        itself always exits 0 after a stop, so the status is set once it
        has finished, by the last exit handler.
        """
        self.log.critical("stopping; blipserver will exit with status 1")
        atexit.register(_exit_with, 1)
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


def _exit_with(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
