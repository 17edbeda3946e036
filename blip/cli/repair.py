"""
``blip repair``: the daemon's repair of gaps from peer loggers
(:mod:`blip.remote.repair`), once, for history: on a reactor of the
command's own, with a pool of its own on the database.
"""

from typing import Any, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from blip.counters import Counters
from blip.db.pool import Pool
from blip.ingest.downtime import LOGGER_DOWN, UNKNOWN
from blip.remote.client import Client
from blip.remote.repair import Pass, Repairer

#: Connections to the database.
POOL_SIZE = 2


def repair_once(
    dsn: str, peers: Sequence[str], token: Optional[str], meters: Sequence[int], first: int, last: int
) -> Pass:
    """
    Repair the ``logger_down`` and ``unknown`` stretches of ``[first,
    last)`` of each of ``meters`` from ``peers`` (tried in order), and wait
    for the end.

    :param dsn: the database, prepared.
    :param token: a bearer token for the peers, or None.
    :return: what was done.
    """
    from twisted.internet import reactor

    async def work() -> Pass:
        pool = Pool(dsn, POOL_SIZE, reactor)
        await pool.start()
        clients = [Client(reactor, url, token) for url in peers]
        try:
            repairer = Repairer(clients, pool, Counters(), reactor)
            return await repairer.run(meters, first, last, (LOGGER_DOWN, UNKNOWN), wait=False)
        finally:
            for client in clients:
                await client.close()
            pool.close()

    outcome: list[Any] = []

    def start() -> None:
        done = Deferred.fromCoroutine(work())
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    result = outcome[0] if outcome else Failure(KeyboardInterrupt())
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, Pass)
    return result
