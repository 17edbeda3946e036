"""
The HTTP site: which application answers which path. What must not reach
any route is refused first; ``/blip`` and ``/last`` are answered before the
router (:mod:`blip.web.hot`), and so are the other legacy routes
(:mod:`blip.web.legacy`); ``/api/v1/...`` is the modern API,
``/healthz`` and ``/metrics`` serve operators, everything else is the
page. Every request is counted and timed, behind
access control; every connection is counted, and let in or refused, as it
opens (:mod:`blip.web.connections`), and read first by the lean path
(:mod:`blip.web.lean`), which answers long-polls, ``/last`` and live
streams on the connection and hands it over to the site for the rest.
"""

import re
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from blip.web.access import Refusals, Rules, peer_address, protect
from blip.web.answers import ANY_ORIGIN, Cors, set_cors
from blip.web.channel import MAX_URI, Channel, Forbidden, TargetRequest, good_host
from blip.web.connections import Door, Entry
from blip.web.errors import refuse
from blip.web.health import Operations
from blip.web.hot import HotRoutes
from blip.web.lean import Front, Lean
from blip.web.legacy import LegacyApi, template
from blip.web.metrics import Metered, RequestMetrics, route_of
from blip.web.v1.routes import ApiV1

#: Connections the kernel holds for the daemon to accept, unless --listen
#: names its own ``backlog`` (the kernel takes at most
#: ``net.core.somaxconn``): room for thousands of clients connecting at once,
#: as they do when the daemon restarts. Twisted's default of 50 has the
#: kernel drop the connections that find it full, and their clients try
#: again a second later, then three, then seven.
BACKLOG = 4096
#: The endpoint types whose descriptions take a ``backlog``.
_QUEUED = {"tcp", "tcp6", "ssl", "unix"}
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def with_backlog(description: str) -> str:
    """
    :param description: the endpoint to listen on (``--listen``).
    :return: the same, with a listen backlog of :data:`BACKLOG` unless it
        names one or takes none.
    """
    kind, *parts = _UNESCAPED_COLON.split(description)
    if kind.lower() not in _QUEUED or any(part.startswith("backlog=") for part in parts):
        return description
    return f"{description}:backlog={BACKLOG}"


class Guard(Resource):
    """
    Refuses, with JSON, what must not reach the routes: request targets
    over :data:`~blip.web.channel.MAX_URI` bytes (414), paths that are not
    UTF-8 (400), a ``Host`` header that is not a host (400, as RFC 9112
    asks, and the router would choke on it), and methods that are not
    upper case (405: methods are case-sensitive, but the router would take
    ``get`` for ``GET``); then lets each of ``fronts`` in turn answer what
    it can (:class:`~blip.web.hot.HotRoutes`, then the other legacy
    routes), and the router the rest.

    :param fronts: each renders a request it answers, else returns None.
    """

    isLeaf = True

    def __init__(self, fronts: Sequence[Callable[[Request], Any]], router: IResource, cors: Cors) -> None:
        super().__init__()
        self.fronts = tuple(fronts)
        self.router = router
        self.cors = cors
        #: The last Host header found good: most requests have the same.
        self._host = b""

    def render(self, request: Request) -> Any:
        if self.cors is not ANY_ORIGIN:
            set_cors(request, self.cors)
        if len(request.uri) > MAX_URI:
            return refuse(request, 414, f"request target longer than {MAX_URI} bytes")
        if request.method != request.method.upper():
            return refuse(request, 405, "method not allowed")
        hosts = request.requestHeaders.getRawHeaders(b"host")
        if hosts is not None and (len(hosts) > 1 or not self._good_host(hosts[0])):
            return refuse(request, 400, "bad Host header")
        assert request.postpath is not None  # set by the site before it renders
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return refuse(request, 400, "path is not UTF-8")
        for front in self.fronts:
            answer = front(request)
            if answer is not None:
                return answer
        return self.router.render(request)

    def _good_host(self, host: bytes) -> bool:
        if host == self._host:
            return True
        if not good_host(host):
            return False
        self._host = host
        return True


class Mount(Resource):
    """
    Hands each request to the resource mounted at its first path segment,
    or to ``default``; the path is left whole.

    :param mounts: resources by first path segment.
    :param default: the resource for every other path.
    """

    isLeaf = True

    def __init__(self, mounts: Mapping[bytes, IResource], default: IResource) -> None:
        super().__init__()
        self.mounts = dict(mounts)
        self.default = default

    def render(self, request: IRequest) -> Any:
        first = request.postpath[0] if request.postpath else b""
        return self.mounts.get(first, self.default).render(request)


class QuietSite(Site):
    """
    The site's connections, each let in or refused by ``door`` as it
    opens, and served by the lean path (:mod:`blip.web.lean`) until a
    request goes the usual way. It writes no access log: a proxy in front
    keeps one, and a line per answered long-poll would drown everything
    else.

    :param resource: the root resource.
    :param door: counts the connections and says which may come in.
    :param lean: the lean path; None for none.
    """

    # Twisted takes any HTTP channel class here, though its type names only
    # its default, a wrapper that can switch to HTTP/2 (blipserver speaks
    # HTTP/1.1).
    protocol = Channel  # type: ignore[assignment]
    requestFactory = TargetRequest

    def __init__(self, resource: IResource, door: Door, lean: Optional[Lean] = None) -> None:
        super().__init__(resource)
        self.door = door
        self.lean = lean

    # (Twisted's type, again, names only its own channel.)
    def buildProtocol(self, addr: Any) -> Optional[IProtocol]:  # type: ignore[override]
        entry = self.door.enter(addr)
        if entry is None:
            # Closed at once, unanswered: over a cap.
            return None
        if entry.forbidden is not None:
            return Forbidden(entry)
        lean = self.lean
        if lean is None:
            return self.channel(addr, entry)
        ip = None
        if lean.rules.allow:
            ip = peer_address(addr)
        judged = ip is not None and lean.rules.trusted(ip)
        return Front(self, lean, entry, judged, ip)

    def channel(self, addr: Any, entry: Optional[Entry]) -> Channel:
        """
        :param entry: the connection's place among the open ones.
        :return: the channel of a connection from ``addr``.
        """
        channel: Channel = super().buildProtocol(addr)
        channel.entry = entry
        return channel

    def log(self, request: Any) -> None:
        pass


def web_site(
    hot: HotRoutes,
    legacy: LegacyApi,
    api: ApiV1,
    operations: Operations,
    metrics: RequestMetrics,
    rules: Rules,
    refusals: Refusals,
    cors: Cors,
    door: Door,
    reactor: IReactorTime,
) -> QuietSite:
    """
    :param rules: who is served.
    :param refusals: where refused clients are counted and logged.
    :param cors: which web pages may read the answers.
    :param door: counts the connections and says which may come in.
    :param reactor: times the deadlines of requests' heads.
    :return: the site, its root resource (``resource``) answering what
        does not go the lean way.
    """
    apps = {b"api": api.app, b"healthz": operations.app, b"metrics": operations.app}
    mount = Mount({first: app.resource() for first, app in apps.items()}, legacy.app.resource())
    route = route_of(apps, legacy.app, template)
    metered = Metered(Guard((hot.render, legacy.render), mount, cors), route, metrics)
    lean = Lean(hot, api.live, api.heavy, legacy, metrics, route, rules, cors, reactor)
    return QuietSite(protect(metered, rules, refusals), door, lean)
