"""
Tests of the HTTP client of other blipservers, against a server of the
test's own on a real port (HTTP, and HTTPS with a certificate authority of
the test's own): answers, the token, time limits, size limits, and how
each failure is classified.
"""

import json
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from blip.remote.client import (
    Client,
    RemoteRefused,
    RemoteUnavailable,
    UrlError,
    base_url,
    read_token,
)
from tests.conftest import _write_certificates, free_port, shared_tempdir


class Server(Resource):
    """Answers by path: what each test needs a server to do."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.parked = []

    def render(self, request):
        path = request.path
        if path == b"/base/ok":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps({
                "authorization": (request.getHeader(b"authorization") or b"").decode(),
                "type": (request.getHeader(b"content-type") or b"").decode(),
                "body": request.content.read().decode(),
                "method": request.method.decode(),
                "query": request.uri.decode(),
            }).encode()
        if path == b"/base/slow":
            self.parked.append(request)
            return NOT_DONE_YET
        if path == b"/base/big":
            return b"[" + b" " * (3 << 20) + b"]"
        if path == b"/base/boom":
            request.setResponseCode(500)
            return b'{"detail": "it broke"}'
        if path == b"/base/busy":
            request.setResponseCode(429)
            return b"slow down"
        if path == b"/base/cut":
            request.setHeader(b"Content-Length", b"100")
            request.write(b"[1,")
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        request.setResponseCode(403)
        return b'{"detail": "not you", "error": "not you"}'


@pytest.fixture
def server():
    """The server on a real port of 127.0.0.1: (port, resource)."""
    resource = Server()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield port.getHost().port, resource
    for request in resource.parked:
        if not request.finished and request.channel is not None:
            request.channel.transport.loseConnection()
    port.stopListening()


def test_urls_and_tokens(tmp_path: Path) -> None:
    """
    A server's URL is http or https with a host, without credentials,
    query or fragment, and loses its trailing slash; a token file holds one
    line.
    """
    assert base_url("https://power.example/ajax/") == "https://power.example/ajax"
    assert base_url(" http://10.0.0.2:8080 ") == "http://10.0.0.2:8080"
    for bad, why in (
        ("ftp://x/", "expected http"),
        ("http:///path", "expected http"),
        ("https://user:secret@x/", "not in the URL"),
        ("http://x/?a=1", "no query"),
        ("http://x:0/", "port 0"),
        ("http://x:99999/", "not a URL"),
    ):
        with pytest.raises(UrlError, match=why):
            base_url(bad)
    good = tmp_path / "token"
    good.write_text("abc.def\n")
    assert read_token(str(good), "--token-file") == "abc.def"
    for content in ("", "\n", "two words\n"):
        good.write_text(content)
        with pytest.raises(UrlError, match="holds no token"):
            read_token(str(good), "--token-file")
    with pytest.raises(UrlError, match="cannot read"):
        read_token(str(tmp_path / "missing"), "--token-file")


@pytest_twisted.ensureDeferred
async def test_answers_and_the_token(server) -> None:
    """
    GET and POST reach the server with the bearer token and the body's
    type, and their JSON answers come back.
    """
    port, _ = server
    client = Client(reactor, f"http://127.0.0.1:{port}/base/", "abc.def")
    try:
        got = await client.get("/ok?x=1")
        assert (got["method"], got["authorization"], got["query"]) == ("GET", "Bearer abc.def", "/base/ok?x=1")
        posted = await client.post("/ok", b"[[1,2]]", b"application/json")
        assert (posted["method"], posted["type"], posted["body"]) == ("POST", "application/json", "[[1,2]]")
        anonymous = Client(reactor, f"http://127.0.0.1:{port}/base")
        assert (await anonymous.get("/ok"))["authorization"] == ""
        await anonymous.close()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_failures_are_classified(server) -> None:
    """
    A refusal (4xx) keeps the server's problem detail; a 5xx, a 429, no
    answer in time, an answer cut short or too long, and no server at all
    are the server being away, each within its time limit.
    """
    port, resource = server
    client = Client(reactor, f"http://127.0.0.1:{port}/base", timeout=0.5)
    try:
        with pytest.raises(RemoteRefused) as refused:
            await client.get("/other")
        assert (refused.value.status, refused.value.detail) == (403, "not you")
        for path, why in (
            ("/boom", "answered 500: it broke"),
            ("/busy", "answered 429: slow down"),
            ("/cut", "cut short"),
        ):
            with pytest.raises(RemoteUnavailable, match=why):
                await client.get(path)
        started = time.monotonic()
        with pytest.raises(RemoteUnavailable, match="no answer .* in 0.5 s"):
            await client.get("/slow")
        assert time.monotonic() - started < 5
        with pytest.raises(RemoteUnavailable, match="longer than 1024 bytes"):
            await client.get("/big", most=1024)
        nobody = Client(reactor, f"http://127.0.0.1:{free_port()}", timeout=2)
        with pytest.raises(RemoteUnavailable, match="127.0.0.1"):
            await nobody.get("/ok")
        await nobody.close()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_https_checks_the_certificate(server, monkeypatch) -> None:
    """
    Over HTTPS the server's certificate is checked against the system's
    authorities (here SSL_CERT_FILE, the test's own): a server it names is
    reached; with an authority that did not sign it, the request fails as
    the server being away, and nothing is sent.
    """
    folder = shared_tempdir("blip-test-tls-")
    _write_certificates(folder)
    resource = Server()
    context = ssl.DefaultOpenSSLContextFactory(str(folder / "server.key"), str(folder / "server.pem"))
    listening = reactor.listenSSL(0, Site(resource), context, interface="127.0.0.1")
    port = listening.getHost().port
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(folder / "ca.pem"))
        client = Client(reactor, f"https://localhost:{port}/base", "abc.def", timeout=5)
        assert (await client.get("/ok"))["authorization"] == "Bearer abc.def"
        await client.close()
        other = shared_tempdir("blip-test-tls-other-")
        _write_certificates(other)
        monkeypatch.setenv("SSL_CERT_FILE", str(other / "ca.pem"))
        client = Client(reactor, f"https://localhost:{port}/base", "abc.def", timeout=5)
        with pytest.raises(RemoteUnavailable):
            await client.get("/ok")
        await client.close()
    finally:
        await listening.stopListening()
