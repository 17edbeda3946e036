"""
Small state files in the state directory (the ingest periods the database
has not recorded, each meter's newest stamp), replaced atomically and made
durable, so that a crash or a power cut leaves either the old file or the
new one, never a part of either.
"""

import os
from pathlib import Path


def replace_file(path: Path, data: bytes) -> None:
    """
    Make ``data`` the content of ``path``: written to a file beside it,
    fsynced, renamed over it, and the folder fsynced.

    :raise OSError: when it cannot be done; ``path`` is then unchanged.
    """
    staged = path.with_name(path.name + ".new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        staged.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(staged, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
