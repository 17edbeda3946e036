"""
A network link to the database for tests: a TCP relay on 127.0.0.1 in
front of the test cluster's Unix socket. It forwards both ways until told to
go dark, then forwards nothing more (in either direction, on connections
open or new) without closing anything, as a link that drops every packet
would look to the daemon; lit again, it forwards what it held.

It runs in threads of its own, so that it forwards whatever the test's
reactor (or the test itself) is doing.
"""

import socket
import threading
from pathlib import Path


class Link:
    """
    Relays each TCP connection made to :attr:`port` on 127.0.0.1 to a new
    connection to the Unix socket ``target``.

    :param target: the server's socket file.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self._lit = threading.Event()
        self._lit.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        #: The port the relay listens on.
        self.port: int = self._server.getsockname()[1]
        #: Connections accepted so far.
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def go_dark(self) -> None:
        """Forward nothing more, and accept no new connection, until lit."""
        self._lit.clear()

    def light(self) -> None:
        """Forward again, what was held first."""
        self._lit.set()

    def close(self) -> None:
        """Close every connection and stop listening."""
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._server.close()
        for s in sockets:
            _close(s)
        self._lit.set()

    def _keep(self, s: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                _close(s)
                return False
            self._sockets.append(s)
            return True

    def _accept(self) -> None:
        while True:
            self._lit.wait()
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            # A connection the kernel accepted while dark waits here.
            self._lit.wait()
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(str(self.target))
            except OSError:
                _close(client)
                _close(upstream)
                continue
            if not (self._keep(client) and self._keep(upstream)):
                return
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            # While dark, what was read is held, and nothing more is read.
            self._lit.wait()
            try:
                sink.sendall(data)
            except OSError:
                break
        _close(source)
        _close(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
