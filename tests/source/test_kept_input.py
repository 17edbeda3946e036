"""
Pins what :mod:`blip.source.kept_input` relies on in pyserial's and
Twisted's internals, on a real pty: pyserial flushes the input through
``_reset_input_buffer`` when it opens a port and when asked to;
``_reconfigure_port``, ``_update_dtr_state`` and ``_update_rts_state`` set
up a descriptor as ``open()`` would; ``close()`` closes the descriptor and
the ``pipe_abort`` pipes; Twisted builds its port with ``_serialFactory``
and reads from its ``fd``. An upgrade that changes any of them fails here.
"""

import fcntl
import os
import select
import struct
import termios
import time

import pytest
import pytest_twisted
import serial
from serial import SerialException
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from blip.source.kept_input import KeptInput, KeptInputPort
from tests.conftest import TIMEOUT, Pty, open_pty


def waiting(pty: Pty, data: bytes) -> None:
    """
    Write ``data`` as the device would and return once all of it waits in
    the device's input queue (a pty hands it over asynchronously).
    """
    pty.write(data)
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the pty never queued the data"
        select.select([pty.slave], [], [], left)
        queued = struct.unpack("i", fcntl.ioctl(pty.slave, termios.FIONREAD, b"\0\0\0\0"))[0]
        if queued >= len(data):
            return


def open_descriptors() -> int:
    """:return: how many descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def test_pyserial_flushes_what_waits_when_it_opens(pty_meter) -> None:
    """
    Plain pyserial throws away what the device sent before the port opened
    (the reason KeptInput exists).
    """
    waiting(pty_meter, b"before\n")
    port = serial.Serial(pty_meter.path, timeout=0)
    try:
        assert port.read(100) == b""
    finally:
        port.close()


def test_kept_input_keeps_what_waits_on_opening_and_flushing(pty_meter) -> None:
    """
    pyserial flushes through ``_reset_input_buffer`` both when it opens a
    port and when asked to (Twisted's ``flushInput``): overriding it keeps
    what the device sent before.
    """
    waiting(pty_meter, b"before\n")
    port = KeptInput(pty_meter.path, timeout=0)
    try:
        port.reset_input_buffer()
        port.flushInput()
        assert port.read(100) == b"before\n"
    finally:
        port.close()


def test_an_adopted_descriptor_is_set_up_as_opening_would() -> None:
    """
    A descriptor opened earlier gets the terminal settings pyserial's
    ``open()`` gives the same device, is the port's ``fd``, and is read
    from.
    """
    opened, adopted = open_pty(), open_pty()
    reference = serial.Serial(opened.path, baudrate=19200, timeout=0)
    fd = os.open(adopted.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    port = KeptInput.adopting(fd, adopted.path, baudrate=19200, timeout=0)
    try:
        assert port.is_open and port.fd == fd and port.port == adopted.path
        assert termios.tcgetattr(fd) == termios.tcgetattr(reference.fd)
        waiting(adopted, b"42\n")
        assert port.read(100) == b"42\n"
    finally:
        port.close()
        reference.close()
        opened.close()
        adopted.close()


def test_closing_an_adopted_port_closes_every_descriptor(pty_meter) -> None:
    """
    ``close()`` closes the adopted descriptor and the pipes that adopting
    opened for pyserial's ``cancel_read``/``cancel_write``: nothing leaks.
    """
    before = open_descriptors()
    fd = os.open(pty_meter.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    port = KeptInput.adopting(fd, pty_meter.path, baudrate=9600, timeout=0)
    assert open_descriptors() > before + 1
    port.close()
    assert open_descriptors() == before
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_descriptor_that_cannot_be_set_up_is_closed() -> None:
    """
    Adopting a descriptor that is not a terminal fails with an error the
    serial endpoint catches, and closes the descriptor.
    """
    before = open_descriptors()
    fd = os.open("/dev/null", os.O_RDWR)
    with pytest.raises((SerialException, OSError, ValueError)):
        KeptInput.adopting(fd, "/dev/null", baudrate=9600, timeout=0)
    assert open_descriptors() == before


class Reader(Protocol):
    """
    Collects what the port reads; fires :attr:`got` once it holds
    :attr:`expected`, and :attr:`closed` when the port closes.
    """

    def __init__(self, expected: bytes) -> None:
        self.expected = expected
        self.data = b""
        self.got: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.expected in self.data and not self.got.called:
            self.got.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


@pytest.mark.parametrize("held", [False, True])
@pytest_twisted.ensureDeferred
async def test_twisted_port_reads_what_waited_and_closes_everything(pty_meter, held: bool) -> None:
    """
    Twisted's serial transport builds its pyserial port through
    ``_serialFactory`` (a path opened now, or a descriptor held from
    before) and flushes it on opening: what waited is read all the same;
    closing the transport closes every descriptor.
    """
    from twisted.internet import reactor

    before = open_descriptors()
    waiting(pty_meter, b"1500\n")
    held_fd = os.open(pty_meter.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK) if held else None
    reader = Reader(b"1500\n")
    port = KeptInputPort(reader, pty_meter.path, reactor, baudrate=9600, held_fd=held_fd)
    await reader.got.addTimeout(TIMEOUT, reactor)
    assert reader.data == b"1500\n"
    if held:
        assert port.fileno() == held_fd
    port.loseConnection()
    await reader.closed.addTimeout(TIMEOUT, reactor)
    assert open_descriptors() == before
