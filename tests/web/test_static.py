"""
Tests of the page's files: served at /, without listings or escapes from
their folder, with validators and gzip.
"""

import gzip
from typing import Callable

import pytest_twisted

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
