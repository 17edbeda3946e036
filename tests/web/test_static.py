"""
Tests of the page's files: served at /, without listings or escapes from
their folder, with validators and gzip.
"""

import gzip
from typing import Callable

import pytest_twisted
from twisted.internet.testing import EventLoggingObserver

from blip.meters import Meters
from blip.service import STATIC
from tests.conftest import ROOT, Served


@pytest_twisted.ensureDeferred
async def test_static_page(serve: Callable[..., Served]) -> None:
    """
    The page is served at /, without directory listings or escapes from its
    folder.
    """
    site = serve(Meters())
    code, headers, content = await site.get("/")
    assert code == 200
    assert headers.getRawHeaders(b"Content-Type")[0].startswith(b"text/html")
    assert content == (STATIC / "index.html").read_bytes()
    assert (await site.get("/../setup.cfg"))[0] == 404
    assert (await site.get("/%2e%2e/setup.cfg"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_validators_gzip_and_json_404s(serve: Callable[..., Served]) -> None:
    """
    A file carries an ETag that a revalidation answers with 304; a client
    that accepts gzip gets it compressed; a folder or a missing file is a
    JSON 404, never a listing or a redirect.
    """
    site = serve(Meters(), memory=True)
    code, headers, content = await site.get("/index.html")
    (etag,) = headers.getRawHeaders(b"ETag")
    assert headers.getRawHeaders(b"Cache-Control") == [b"no-cache"]
    code, _, _ = await site.get("/index.html", {"If-None-Match": etag.decode()})
    assert code == 304
    code, headers, zipped = await site.get("/index.html", {"Accept-Encoding": "gzip"})
    assert headers.getRawHeaders(b"Content-Encoding") == [b"gzip"]
    assert gzip.decompress(zipped) == content
    folders = [p.name for p in STATIC.iterdir() if p.is_dir()]
    for path in ["/nothing.html", *(f"/{name}" for name in folders), *(f"/{name}/" for name in folders)]:
        code, headers, content = await site.get(path)
        assert (code, content) == (404, b'{"error":"no such route"}'), path


def test_static_folder_is_the_repositorys() -> None:
    """
    The page's folder resolves to the static/ folder at the top.
    """
    assert STATIC.resolve() == (ROOT / "static").resolve()


@pytest_twisted.ensureDeferred
async def test_odd_file_names_and_ranges_are_no_500(
    serve: Callable[..., Served], log_events: EventLoggingObserver
) -> None:
    """
    A path with a NUL byte names no file (a JSON 404, where the file
    system's refusal to look it up was a 500 with a traceback); a Range
    header, however odd (one that made Twisted's byte ranges fail, one
    they answered with an empty 416 of the file's type), gets the whole
    file: the page's files are sent whole, from memory. Nothing is logged
    as a failure.
    """
    site = serve(Meters())
    for path in ("/%00", "/index.html%00", "/js/%00", "/vendor/%00/x"):
        code, headers, content = await site.get(path)
        assert (code, content) == (404, b'{"error":"no such route"}'), path
    whole = (STATIC / "index.html").read_bytes()
    for odd in ("bytes=-99999999999999999999", "bytes=999999999-", "bytes=0-0,99999999-", "bytes=0-9"):
        code, headers, content = await site.get("/index.html", {"Range": odd})
        assert (code, content) == (200, whole), odd
        assert headers.getRawHeaders(b"Content-Range") is None
    assert [e for e in log_events if "log_failure" in e] == []
