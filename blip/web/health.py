"""
The operators' routes: ``/healthz`` for load balancers and service
monitors, ``/metrics`` for Prometheus.

``/healthz`` may be reached by more than operators: it says what is wrong
in plain words (``database: unreachable``), and logs the details (which
name hosts and users) at most once a minute.
"""

from typing import Any, Callable, Optional

import psycopg2
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from blip.common.throttle import Throttle
from blip.db.pool import RETRIABLE
from blip.db.queries import Queries
from blip.model import Point
from blip.web.answers import encode
from blip.web.errors import answer_error

#: Seconds the database has to answer a health check.
DATABASE_TIMEOUT = 5.0
#: Seconds between two log lines about failed health checks.
LOG_INTERVAL = 60.0

Receive = Callable[[Point], None]


def database_trouble(error: BaseException) -> str:
    """
    :return: what is wrong with the database, in words that give nothing
        away (no host, user or query).
    """
    if isinstance(error, defer.TimeoutError):
        return f"not answering within {DATABASE_TIMEOUT:g} s"
    if isinstance(error, psycopg2.errors.UndefinedTable):
        return "not prepared yet"
    if isinstance(error, RETRIABLE):
        return "unreachable"
    return "failing (see the log)"


class Health:
    """
    Whether the daemon does its job: its serial source delivered a blip
    within the last ``window`` seconds (when it has one), and the database
    answers.

    The source's blips are this node's own, as they are read: points of
    other nodes (through ``LISTEN``) say nothing of this node's source.

    :param store: the database.
    :param clock: the current time.
    :param window: seconds without a blip before the source counts as
        failed.
    :param has_source: whether this node reads a serial source.
    """

    log = Logger()

    def __init__(self, store: Queries, clock: IReactorTime, window: float, has_source: bool) -> None:
        self.store = store
        self.clock = clock
        self.window = window
        self.has_source = has_source
        #: When the last blip arrived (the start counts as one).
        self.last_blip = clock.seconds()
        self._throttle = Throttle(clock, LOG_INTERVAL)

    def watching(self, receive: Receive) -> Receive:
        """
        :return: ``receive``, after noting that the source delivered a
            blip.
        """

        def blip(point: Point) -> None:
            self.last_blip = self.clock.seconds()
            receive(point)

        return blip

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """
        :return: whether all is well, and a report naming what is not.
        """
        checks: dict[str, Any] = {}
        problems = []
        if self.has_source:
            age = self.clock.seconds() - self.last_blip
            ok = age <= self.window
            checks["serial"] = {"ok": ok, "seconds_since_blip": round(age, 3)}
            if not ok:
                problems.append(
                    f"serial: no blip for {age:.0f} s (more than {self.window:g} s)"
                )
        try:
            ping = Deferred.fromCoroutine(self.store.ping())
            ping.addTimeout(DATABASE_TIMEOUT, self.clock)
            await ping
        except Exception as e:
            why = database_trouble(e)
            checks["database"] = {"ok": False, "error": why}
            problems.append(f"database: {why}")
            held = self._throttle.due()
            if held is not None:
                self.log.warn(
                    "health check: database {why}: {detail} ({count} failed checks since the"
                    " last such line)",
                    why=why,
                    detail=str(e).strip() or type(e).__name__,
                    count=held + 1,
                )
        else:
            checks["database"] = {"ok": True}
        report: dict[str, Any] = {"status": "fail" if problems else "ok", "checks": checks}
        if problems:
            report["error"] = "; ".join(problems)
        return not problems, report


class Operations:
    """
    ``/healthz`` and ``/metrics``.

    :param health: the health check.
    :param registry: the metrics.
    """

    app = Klein()
    log = Logger()

    def __init__(self, health: Health, registry: CollectorRegistry) -> None:
        self.health = health
        self.registry = registry

    def resource(self) -> IResource:
        """
        :return: the resource answering both routes.
        """
        return self.app.resource()

    @app.handle_errors(Exception)
    def error(self, request: IRequest, failure: Failure) -> Optional[bytes]:
        return answer_error(request, failure, self.log)

    @app.route("/healthz", methods=["GET", "HEAD"])
    async def healthz(self, request: IRequest) -> bytes:
        ok, report = await self.health.check()
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return encode(report)

    @app.route("/metrics", methods=["GET", "HEAD"])
    async def metrics(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(self.registry)
