"""
One daemon per state dir: the spool, the record of ingest periods and the
embedded database in it each belong to one process. The daemon holds an
exclusive lock on ``<state-dir>/lock`` while it runs (the kernel lets go
when the process ends, however it ends), with its process id in the file
for whoever finds it taken.

The state dir of a daemon that starts as root and runs as another user
belongs to that user: the lock is opened there without following a link,
and only a file of that user's or root's with no other name is taken (and
given to that user).
"""

import fcntl
import os
from pathlib import Path
from typing import Optional, TextIO

from blip.common.owned import open_file

#: The lock's file name in the state dir.
LOCK = "lock"


class StateDirInUse(Exception):
    """
    Another process holds the state dir.
    """


def hold(state_dir: Path, owner: Optional[tuple[int, int]] = None) -> TextIO:
    """
    Take the state dir for this process.

    :param owner: the user and group the daemon will run as (twistd's
        --uid/--gid), who is given the lock file, so that a later start as
        that user can take it.
    :return: the open lock file: the lock lasts as long as it stays open
        (also across twistd's fork into the background: call
        :func:`note_process` from the process that stays).
    :raise StateDirInUse: when another process holds it, naming that
        process.
    :raise blip.common.owned.Unsafe: when the lock is not a regular file
        of ours or the owner's (a link planted by the owner, say).
    :raise OSError: when the lock file cannot be opened.
    """
    path = state_dir / LOCK
    owners = {os.geteuid()} | ({owner[0]} if owner is not None else set())
    lock = os.fdopen(open_file(path, owners, create=True), "r+")
    if owner is not None:
        os.fchown(lock.fileno(), *owner)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise StateDirInUse(f"{state_dir} is in use by blipserver process {holder}") from None
    note_process(lock)
    return lock


def note_process(lock: TextIO) -> None:
    """
    Write this process's id in the lock file.
    """
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
