"""
A reverse proxy for the page tests: serves the daemon at
``http://127.0.0.1:<port>/<prefix>/``, as Apache's ProxyPass or nginx's
proxy_pass would.

Run as ``python -m tests.proxy PORT PREFIX UPSTREAM_PORT``.
"""

import sys

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site


def main(port: int, prefix: str, upstream: int) -> None:
    """
    Proxy everything under ``/<prefix>/`` to the daemon's ``/``.
    """
    root = Resource()
    root.putChild(prefix.encode(), ReverseProxyResource("127.0.0.1", upstream, b""))
    reactor.listenTCP(port, Site(root), interface="127.0.0.1")
    print(f"proxy listening on {port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
