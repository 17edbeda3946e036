"""
The HTTP site: which application answers which path. ``/api/v1/...`` is the
modern API, ``/healthz`` and ``/metrics`` serve operators, everything else
is the legacy API and the page; every request is counted and timed.
"""

from typing import Any, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from blip.web.front import Channel, Guard, HotRoutes
from blip.web.health import Operations
from blip.web.legacy import LegacyApi
from blip.web.metrics import Metered, RequestMetrics, route_of
from blip.web.v1.routes import ApiV1


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


def site_root(
    legacy: LegacyApi,
    api: ApiV1,
    operations: Operations,
    metrics: RequestMetrics,
    reactor: IReactorTime,
) -> IResource:
    """
    :return: the root resource of the site.
    """
    apps = {b"api": api.app, b"healthz": operations.app, b"metrics": operations.app}
    mount = Mount({first: app.resource() for first, app in apps.items()}, legacy.app.resource())
    hot = HotRoutes(legacy.hub, legacy.meters, legacy.clock, legacy.longpoll_timeout, reactor)
    return Metered(Guard(hot, mount), route_of(apps, legacy.app), metrics)


class QuietSite(Site):
    """
    A site that writes no access log: a proxy in front keeps one, and a
    line per answered long-poll would drown everything else.
    """

    # Twisted takes any HTTP channel class here, though its type names only
    # its default, a wrapper that can switch to HTTP/2 (blipserver speaks
    # HTTP/1.1).
    protocol = Channel  # type: ignore[assignment]

    def log(self, request: Any) -> None:
        pass
