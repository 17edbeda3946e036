"""
One daemon per state dir: the spool, the record of ingest periods and the
embedded database in it each belong to one process. The daemon holds an
exclusive lock on ``<state-dir>/lock`` while it runs (the kernel lets go
when the process ends, however it ends), with its process id in the file
for whoever finds it taken.
"""

import fcntl
import os
from pathlib import Path
from typing import TextIO

#: The lock's file name in the state dir.
LOCK = "lock"


class StateDirInUse(Exception):
    """
    Another process holds the state dir.
    """


def hold(state_dir: Path) -> TextIO:
    """
    Take the state dir for this process.

    :return: the open lock file: the lock lasts as long as it stays open.
    :raise StateDirInUse: when another process holds it, naming that
        process.
    """
    path = state_dir / LOCK
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise StateDirInUse(f"{state_dir} is in use by blipserver process {holder}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
