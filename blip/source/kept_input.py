"""
The serial port, opened the way blipserver needs it: keeping what the
device sent before it was opened, and over a descriptor opened earlier.

pyserial and Twisted both throw away the input waiting when a port opens;
lines an Arduino buffered while the daemon was restarting would be lost.
pyserial has no public way to keep them, nor to take a descriptor opened
before the daemon gave up root, and Twisted none to hand its serial
transport a port built another way. This module is the one place that
reaches into their internals for that; tests/source/test_kept_input.py pins
each internal it relies on, so that an upgrade of either breaks a test
rather than the daemon.
"""

import errno
import os
from functools import partial
from typing import TYPE_CHECKING, Any, Optional

import serial
from twisted.internet.serialport import SerialPort


class KeptInput(serial.Serial):
    """
    pyserial's port, except that opening it (and flushing its input) keeps
    what the device sent before.
    """

    if TYPE_CHECKING:
        # pyserial's own, private and so missing from its type stubs.
        _dsrdtr: bool
        _rtscts: bool

        def _reconfigure_port(self, force_update: bool = False) -> None: ...
        def _update_dtr_state(self) -> None: ...
        def _update_rts_state(self) -> None: ...

    def _reset_input_buffer(self) -> None:
        # What pyserial's open() and reset_input_buffer() (which Twisted's
        # flushInput calls) flush the input with.
        pass

    @classmethod
    def adopting(cls, fd: int, port: str, **settings: Any) -> "KeptInput":
        """
        :param fd: a descriptor of the device opened earlier (before the
            daemon gave up root); closed with the port, or at once if it
            cannot be set up.
        :param port: the device's path.
        :param settings: pyserial's settings (baudrate, ...).
        :return: a port over ``fd``, set up as opening ``port`` would set
            it up (pyserial's ``open()``, less the opening).
        """
        device = cls(None, **settings)
        device.port = port
        device.fd = fd
        try:
            device._reconfigure_port(force_update=True)
            try:
                if not device._dsrdtr:
                    device._update_dtr_state()
                if not device._rtscts:
                    device._update_rts_state()
            except OSError as e:
                # A pty has no modem lines.
                if e.errno not in (errno.EINVAL, errno.ENOTTY):
                    raise
            device.pipe_abort_read_r, device.pipe_abort_read_w = os.pipe()
            device.pipe_abort_write_r, device.pipe_abort_write_w = os.pipe()
        except BaseException:
            os.close(fd)
            device.fd = None
            for end in ("read_r", "read_w", "write_r", "write_w"):
                pipe = getattr(device, f"pipe_abort_{end}", None)
                if pipe is not None:
                    os.close(pipe)
            raise
        device.is_open = True
        return device


class KeptInputPort(SerialPort):
    """
    Twisted's serial transport over :class:`KeptInput`.

    :param held_fd: a descriptor of the device opened earlier, to use
        instead of opening it now.
    """

    _serialFactory = KeptInput

    def __init__(self, *args: Any, held_fd: Optional[int] = None, **kwargs: Any) -> None:
        if held_fd is not None:
            # Twisted calls any factory of pyserial ports, not only a class.
            self._serialFactory = partial(KeptInput.adopting, held_fd)  # type: ignore[assignment]
        super().__init__(*args, **kwargs)
