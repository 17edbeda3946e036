"""
The page's files, served from its folder: no directory listings, JSON
404s, validators so that browsers revalidate cheaply, and gzip for
clients that accept it. The files are small, and sent whole from memory:
an answer holds no open file, and byte ranges are not offered.
"""

import gzip
from typing import Any

from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.static import File, getTypeAndEncoding

from blip.web.errors import refuse

#: Types worth compressing.
_COMPRESSIBLE = (b"text/", b"application/javascript", b"application/json", b"image/svg+xml")
#: The files, as sent, by (path, modification time, size, whether
#: compressed): the page is small.
_cached: dict[tuple[str, float, int, bool], bytes] = {}


class JSONNotFound(Resource):
    """
    A 404 with a JSON body, for paths that match no route and no file.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return refuse(request, 404, "no such route")


class StaticFiles(File):
    """
    The page's files: no directory listings, JSON 404s, an ETag and
    Last-Modified on each so browsers revalidate cheaply, and gzip for
    clients that accept it; each sent whole, from memory.
    """

    # Twisted takes any resource here, though their types are inferred from
    # its defaults.
    childNotFound = JSONNotFound()  # type: ignore[assignment]
    forbidden = JSONNotFound()  # type: ignore[assignment]

    def directoryListing(self) -> Resource:
        return self.childNotFound

    def getChild(self, path: bytes, request: IRequest) -> Any:
        # No file name holds a NUL byte; the file system refuses to look
        # one up (ValueError), which is no reason for a 500.
        if b"\x00" in path:
            return self.childNotFound
        return super().getChild(path, request)

    def render_GET(self, request: IRequest) -> Any:
        if not self.isfile():
            # A folder named without its slash: no redirect to an absolute
            # URL (it would escape a proxy's path prefix), no listing.
            return self.childNotFound.render(request)
        mtime, size = self.getModificationTime(), self.getsize()
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Vary", b"Accept-Encoding")
        if request.setETag(b'"%x-%x"' % (int(mtime * 1000), size)) is http.CACHED:
            return b""
        if request.setLastModified(mtime) is http.CACHED:
            return b""
        content_type, _ = getTypeAndEncoding(
            self.basename(), self.contentTypes, self.contentEncodings, self.defaultType
        )
        accepted = request.getHeader(b"Accept-Encoding") or b""
        zipped = bool(
            b"gzip" in accepted and content_type and content_type.encode().startswith(_COMPRESSIBLE)
        )
        key = (self.path, mtime, size, zipped)
        body = _cached.get(key)
        if body is None:
            try:
                body = self.getContent()
            except OSError:
                return self.childNotFound.render(request)
            if zipped:
                body = gzip.compress(body, 9, mtime=0)
            _cached[key] = body
        if content_type:
            request.setHeader(b"Content-Type", content_type.encode())
        if zipped:
            request.setHeader(b"Content-Encoding", b"gzip")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body

    render_HEAD = render_GET
