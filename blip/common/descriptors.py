"""
The process's file descriptors (``RLIMIT_NOFILE``): the soft limit raised
to the hard one at start, as a daemon serving many connections does, and
how many of them client connections may take, once a reserve is kept for
what the daemon opens itself.
"""

import resource
from dataclasses import dataclass
from typing import Any

from twisted.internet.selectreactor import SelectReactor

#: Descriptors kept from client connections for the daemon's own: the
#: spool and the record of ingest periods, the serial device, the
#: database pools and the LISTEN connection, MQTT, the embedded cluster's
#: commands (pg_ctl and its pipes), the state dir's lock, the log, the
#: reactor's own, and a margin. (At most half the limit, for a tiny one.)
RESERVE = 128
#: Most descriptors asked for when the hard limit is unlimited.
CEILING = 1 << 20
#: Highest descriptor ``select()`` can watch, plus one.
FD_SETSIZE = 1024


@dataclass(frozen=True, slots=True)
class Descriptors:
    """
    :param limit: how many descriptors the process may have open.
    :param before: the soft limit it started with.
    """

    limit: int
    before: int

    @property
    def reserve(self) -> int:
        """Descriptors kept for the daemon's own files and connections."""
        return min(RESERVE, self.limit // 2)

    @property
    def room(self) -> int:
        """Descriptors client connections may take."""
        return self.limit - self.reserve


def raise_limit(reactor: Any) -> Descriptors:
    """
    Raise the soft limit on open files to the hard limit, unless the
    reactor watches descriptors with ``select()``, which cannot watch any
    above :data:`FD_SETSIZE`.

    :return: the limit now, and before.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if isinstance(reactor, SelectReactor):
        return Descriptors(min(soft, FD_SETSIZE), soft)
    wanted = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return Descriptors(soft, soft)
        return Descriptors(wanted, soft)
    return Descriptors(min(soft, CEILING), soft)
