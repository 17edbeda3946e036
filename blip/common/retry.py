"""
Retrying with backoff: the one policy and the one loop for every attempt
against something that may be away (the database, above all), so that each
outage is said once, its end once, and nothing hammers a server that is down.
"""

from typing import Awaitable, Callable, Optional, TypeVar

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

T = TypeVar("T")

#: Seconds before the first retry; each later wait doubles, up to
#: :data:`MAX_DELAY`.
FIRST_DELAY = 0.25
#: Most seconds between two attempts.
MAX_DELAY = 30.0

Policy = Callable[[int], float]


def backoff(first: float = FIRST_DELAY, most: float = MAX_DELAY) -> Policy:
    """
    :return: the wait before retry number ``n`` (1, 2, ...): ``first``
        doubling up to ``most``, with Twisted's jitter.
    """
    policy: Policy = backoffPolicy(initialDelay=first, maxDelay=most, factor=2.0)
    return policy


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    retriable: tuple[type[BaseException], ...],
    clock: IReactorTime,
    log: Logger,
    what: str,
    ready: Optional[Callable[[], "Deferred[None]"]] = None,
    policy: Optional[Policy] = None,
) -> T:
    """
    Run ``attempt`` until it does not fail with one of ``retriable``,
    waiting with backoff between attempts. The first failure is logged as a
    warning (``cannot <what>: <why>; retrying``), success after failures at
    info level; any other error passes on at once. Cancelling the returned
    coroutine's Deferred cancels the wait under way.

    :param what: what is attempted, for the log (``read the last points``).
    :param ready: returns a Deferred that fires when an attempt may succeed
        (a connection is open), awaited before each one.
    :param policy: the wait before each retry (:func:`backoff` when None).
    :return: what the attempt that worked returned.
    """
    delay = policy or backoff()
    failures = 0
    while True:
        if ready is not None:
            await ready()
        try:
            result = await attempt()
        except retriable as e:
            failures += 1
            if failures == 1:
                log.warn(
                    "cannot {what}: {why}; retrying", what=what, why=str(e).strip() or repr(e)
                )
            await deferLater(clock, delay(failures), lambda: None)
            continue
        if failures:
            log.info("{what}: done after {failures} failed attempts", what=what, failures=failures)
        return result
