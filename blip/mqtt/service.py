"""
MQTT publishing while the daemon runs, the way Home Assistant discovers
sensors: the publisher (:mod:`blip.mqtt.publisher`) observes this node's
ingest (the points its source reads, and those it stores), the link
(:mod:`blip.mqtt.connection`) keeps the broker connection, and each meter's
stored blip count is loaded once the database is ready.
"""

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from blip.common.lifecycle import AfterReady
from blip.common.retry import retrying
from blip.common.waiting import detached
from blip.db.pool import RETRIABLE
from blip.db.readings import Readings
from blip.ingest.writer import Ingest
from blip.meters import Meters
from blip.mqtt.broker import Broker
from blip.mqtt.connection import Link, broker_endpoint
from blip.mqtt.publisher import Publisher


class MqttService(AfterReady):
    """
    Publishes the meters over MQTT while the daemon runs: observes ingest
    and keeps the broker connection from the start, and loads each meter's
    stored blip count once the database is ready (retried while it is
    away).

    :param publisher: the publisher.
    :param link: the broker connection.
    :param ingest: this node's ingest.
    :param store: the database.
    :param ready: returns a Deferred that fires when the database is ready.
    """

    log = Logger()

    def __init__(
        self,
        publisher: Publisher,
        link: Link,
        ingest: Ingest,
        store: Readings,
        ready: Callable[[], "Deferred[None]"],
    ) -> None:
        super().__init__("MQTT publishing", ready, self._load, self._close, self._open)
        self.publisher = publisher
        self.link = link
        self.ingest = ingest
        self.store = store
        self._unlisten: Optional[Callable[[], None]] = None

    def _open(self) -> None:
        self._unlisten = self.ingest.observe(self.publisher)
        self.link.service.startService()

    async def _load(self) -> None:
        totals = await retrying(
            lambda: detached(Deferred.fromCoroutine(self.store.blip_totals())),
            RETRIABLE,
            self.link.clock,
            self.log,
            "read the stored blip counts for MQTT",
        )
        self.publisher.set_totals(totals)

    async def _close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        self.publisher.close()
        await self.link.stop()


def mqtt_service(
    broker: Broker,
    interval: float,
    ingest: Ingest,
    meters: Meters,
    store: Readings,
    ready: Callable[[], "Deferred[None]"],
    reactor: Any,
    clock: IReactorTime,
) -> MqttService:
    """
    Build the MQTT publishing of the daemon (see :class:`MqttService`).
    """
    publisher = Publisher(broker, meters, clock, interval)
    link = Link(broker, publisher, broker_endpoint(reactor, broker), clock)
    return MqttService(publisher, link, ingest, store, ready)
