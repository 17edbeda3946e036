"""
Files and folders that another account may control: the state dir of a
daemon that starts as root and runs as another user, and the embedded
database's folder, which the database's own user owns. Whatever is done
there as root must not be turned against another file: nothing here
follows a symbolic link (``O_NOFOLLOW``, and a folder's entries are
reached through the folder's open descriptor), each file or folder is
checked after it is opened (its type, its owner, its number of names), its
owner is changed through that descriptor, and a file is written whole to
a new name, synced and renamed into place. What is not as it should be is
refused with :class:`Unsafe`, one line naming the path.
"""

import errno
import os
import pwd
import stat
from collections.abc import Collection
from pathlib import Path
from types import TracebackType
from typing import Optional

#: Flags of every open: no symbolic link followed, no descriptor leaked to
#: children, and no wait on a FIFO planted where a file should be.
_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Unsafe(Exception):
    """
    A path is not what it should be (a symbolic link, another type, another
    owner, a folder others may enter); the message names it and says why.

    :param path: the path.
    :param why: what is wrong with it, after its name.
    """

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path} {why}")
        self.path = path


class WrongOwner(Unsafe):
    """
    A path belongs to another user than the one it should.
    """


def user_name(uid: int) -> str:
    """
    :return: the name of user ``uid``, or the number when it has none.
    """
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def judge(
    info: os.stat_result, path: Path, folder: bool, owners: Collection[int], private: bool = False
) -> None:
    """
    Check what ``lstat`` or ``fstat`` says of ``path``.

    :param folder: whether it must be a folder (else a regular file with
        one name: a second name, a hard link, could be any file).
    :param owners: the users it may belong to.
    :param private: whether no one but its owner may read or enter it.
    :raise Unsafe: saying what is wrong.
    """
    _judge_type(info, path, folder)
    if info.st_uid not in owners:
        wanted = " or ".join(sorted(user_name(uid) for uid in owners))
        raise WrongOwner(path, f"belongs to user {user_name(info.st_uid)}, not to {wanted}")
    if not folder and info.st_nlink != 1:
        raise Unsafe(path, f"has {info.st_nlink} names (hard links): remove it")
    if private and info.st_mode & 0o077:
        raise Unsafe(
            path,
            f"is open to other users (mode {stat.S_IMODE(info.st_mode):04o}),"
            f" where a folder private to {user_name(info.st_uid)} should be: remove it"
        )


def _judge_type(info: os.stat_result, path: Path, folder: bool) -> None:
    kind = "folder" if folder else "regular file"
    if stat.S_ISLNK(info.st_mode):
        raise Unsafe(path, f"is a symbolic link, where a {kind} should be: remove it")
    if not (stat.S_ISDIR if folder else stat.S_ISREG)(info.st_mode):
        raise Unsafe(path, f"is not a {kind}: remove it")


def open_file(path: Path, owners: Collection[int], create: bool = False, mode: int = 0o644) -> int:
    """
    Open a file for reading and writing without following a link at its
    last step (the folders before it are the caller's to trust).

    :param create: create it (with ``mode``) when it is missing.
    :return: the open descriptor, blocking.
    :raise Unsafe: when it is not a regular file of one of ``owners``.
    :raise OSError: when it cannot be opened.
    """
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    fd = _open(path, None, flags, mode, path, folder=False)
    _checked(fd, path, folder=False, owners=owners)
    os.set_blocking(fd, True)
    return fd


class Folder:
    """
    An open folder, whose entries are reached through its descriptor, so
    that the folder cannot be swapped for another under way.

    :param fd: the open descriptor.
    :param path: its path, for messages.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def trusted(cls, path: Path) -> "Folder":
        """
        Open a folder whose path the caller trusts (given by the one who
        started the daemon, or the system's temporary folder).

        :raise OSError: when it cannot be opened.
        """
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path)

    def folder(
        self,
        name: str,
        owner: tuple[int, int],
        create: bool = True,
        mode: int = 0o700,
        private: bool = False,
    ) -> "Folder":
        """
        Open the folder ``name`` in this one, owned by ``owner``, making it
        (given to ``owner``) when it is missing.

        :param owner: the user and group it belongs to.
        :param create: make it when missing.
        :param mode: its mode when made (less the umask).
        :param private: refuse it when others may read or enter it.
        :raise Unsafe: when it is not a folder of ``owner`` (or not private).
        :raise OSError: when it cannot be made or opened (FileNotFoundError
            when it is missing and not to be made).
        """
        made = False
        path = self.path / name
        if create:
            try:
                os.mkdir(name, mode, dir_fd=self.fd)
                made = True
            except FileExistsError:
                pass
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(path)) from None
        fd = _open(name, self.fd, os.O_RDONLY | os.O_DIRECTORY, 0, path, folder=True)
        # A folder made just now is ours until it is given away; one that
        # was there must be the owner's already.
        _checked(fd, path, folder=True, owners={os.geteuid() if made else owner[0]}, private=private)
        if made and owner[0] != os.geteuid():
            os.fchown(fd, *owner)
        return Folder(fd, path)

    def check(self, name: str, folder: bool, owners: Collection[int], private: bool = False) -> bool:
        """
        Check an entry without opening it.

        :return: whether it exists.
        :raise Unsafe: when it exists and is not what it should be.
        """
        try:
            info = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        judge(info, self.path / name, folder, owners, private)
        return True

    def read(self, name: str, owners: Collection[int]) -> Optional[bytes]:
        """
        :return: the content of file ``name``, or None when it is missing.
        :raise Unsafe: when it is not a regular file of one of ``owners``.
        """
        path = self.path / name
        try:
            fd = _open(name, self.fd, os.O_RDONLY, 0, path, folder=False)
        except FileNotFoundError:
            return None
        _checked(fd, path, folder=False, owners=owners)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write(self, name: str, data: bytes, owner: tuple[int, int], mode: int = 0o600) -> None:
        """
        Replace file ``name`` with ``data``: written to a new file given to
        ``owner``, synced, and renamed over the old one (never through it),
        then the folder synced, so that a crash leaves the old or the new.

        :raise Unsafe: when what stands at ``name`` is not a regular file
            of ``owner``.
        """
        self.check(name, folder=False, owners={owner[0]})
        staged = f".{name}.new"
        try:
            os.unlink(staged, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        fd = _open(staged, self.fd, flags, mode, self.path / staged, folder=False)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if owner[0] != os.geteuid():
                os.fchown(fd, *owner)
            os.fsync(fd)
        os.rename(staged, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)

    def remove(self, name: str, owners: Collection[int]) -> bool:
        """
        Remove file ``name`` (the name only: a link is never followed).

        :return: whether there was one.
        :raise Unsafe: when it is not a regular file of one of ``owners``.
        """
        if not self.check(name, folder=False, owners=owners):
            return False
        os.unlink(name, dir_fd=self.fd)
        os.fsync(self.fd)
        return True

    def close(self) -> None:
        """Close the descriptor."""
        os.close(self.fd)

    def __enter__(self) -> "Folder":
        return self

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()


def _open(
    name: "str | Path", dir_fd: Optional[int], flags: int, mode: int, path: Path, folder: bool
) -> int:
    try:
        return os.open(name, flags | _OPEN, mode, dir_fd=dir_fd)
    except OSError as e:
        # A link at the last step (ELOOP), or a file where a folder should
        # be (ENOTDIR): say which, from what is there.
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                pass
            else:
                _judge_type(info, path, folder)
        # Named in full: the name alone is relative to a folder's descriptor.
        raise type(e)(e.errno, e.strerror, str(path)) from None


def _checked(fd: int, path: Path, folder: bool, owners: Collection[int], private: bool = False) -> None:
    try:
        judge(os.fstat(fd), path, folder, owners, private)
    except Unsafe:
        os.close(fd)
        raise
