"""
paho-mqtt's client over a connection it does not own. paho's ``connect()``
resolves the name, connects and shakes hands over TLS with blocking calls;
here paho reads and writes through :class:`Bridge`, a socket-like object on
a Twisted transport, and :class:`BridgedClient` hands it to paho where paho
would open a socket of its own.

This module is the one place that relies on paho's internals: the private
``_create_socket`` that ``reconnect()`` calls, and what paho expects of a
socket (``recv`` raising ``BlockingIOError`` while nothing waits and
returning ``b""`` once closed, ``send`` returning how much it took,
``setblocking``, ``close``). tests/mqtt/test_bridge.py pins each of them, so
that a paho upgrade that changes one fails a test.
"""

from typing import Any, Callable, Optional

import paho.mqtt.client as paho


class Bridge:
    """
    The socket paho reads and writes: bytes received on the connection
    wait in :attr:`received` for paho to read; what paho writes goes to the
    connection, whose transport buffers it.

    :param write: writes bytes on the connection.
    :param close: closes the connection (paho closes its socket on an error
        and after a disconnect).
    """

    def __init__(self, write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        self.write = write
        self.close_connection = close
        #: Bytes received and not read by paho yet.
        self.received = bytearray()
        #: Whether the connection is closed (paho then reads its end).
        self.closed = False

    def recv(self, size: int) -> bytes:
        """
        :return: up to ``size`` received bytes, or ``b""`` once closed.
        :raise BlockingIOError: when nothing waits (yet).
        """
        if self.received:
            data = bytes(self.received[:size])
            del self.received[:size]
            return data
        if self.closed:
            return b""
        raise BlockingIOError()

    def send(self, data: Any) -> int:
        """
        Write ``data`` on the connection.

        :return: how many bytes were taken: all of them.
        """
        if self.closed:
            raise ConnectionError("the connection to the broker is closed")
        self.write(bytes(data))
        return len(data)

    def close(self) -> None:
        """
        Close the connection (once).
        """
        if not self.closed:
            self.closed = True
            self.close_connection()

    def setblocking(self, flag: bool) -> None:
        """
        What paho calls on a socket it gets: nothing to do here.
        """


class BridgedClient(paho.Client):
    """
    paho's client, opening no socket of its own: ``reconnect()`` takes
    :attr:`bridge` to an already open connection, where paho would open a
    blocking socket.
    """

    #: The connection paho gets on ``reconnect()``.
    bridge: Optional[Bridge] = None

    def _create_socket(self) -> Any:
        return self.bridge
