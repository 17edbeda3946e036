"""
Started as root, the daemon does nothing through a path that a less
privileged account controls: the state dir's lock when twistd --uid/--gid
make the daemon another user, the embedded cluster's folders and files,
which the ``postgres`` account owns, and its socket folder in the system's
temporary directory, where any user may put anything. Each test plants a
link there, as that account would, to a file or folder of root's; the
daemon refuses to start, in one line naming the link, and the file or
folder is as it was.
"""

import os
import pwd
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blip.db.embedded import Cluster, server_user
from tests.conftest import shared_tempdir


@pytest.fixture
def root() -> None:
    """Fail unless the tests run as root (these are about starting as root)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it starts the daemon as root): run the tests as root")


@pytest.fixture
def state(root: None) -> Iterator[Path]:
    """A state dir of root's, removed after the test."""
    folder = shared_tempdir("blip-test-root-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def snapshot(path: Path) -> tuple:
    """:return: the owner, mode and content (or entries) of a file or folder."""
    info = path.stat()
    content = sorted(os.listdir(path)) if path.is_dir() else path.read_bytes()
    return info.st_uid, info.st_gid, info.st_mode, content


def roots_file(path: Path, folder: bool) -> Path:
    """Make a file (or a folder with a file in it) that only root may change."""
    if folder:
        path.mkdir(mode=0o755)
        (path / "inside").write_bytes(b"root's\n")
    else:
        path.write_bytes(b"root's, not to be overwritten\n")
        path.chmod(0o644)
    return path


def plant(link: Path, target: Path, user: pwd.struct_passwd) -> None:
    """Put a link to ``target`` at ``link``, owned by ``user``, as that user would."""
    link.symlink_to(target)
    os.lchown(link, user.pw_uid, user.pw_gid)


def test_a_link_at_the_lock_is_refused_before_the_switch(
    start_daemon, database, state, tmp_path
) -> None:
    """
    Started as root with --uid/--gid, the daemon takes the lock in the
    state dir, which belongs to that user, while it is still root: a link
    that user put there is refused, and the file it points at is neither
    given to the user nor overwritten.
    """
    nobody = pwd.getpwnam("nobody")
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    target = roots_file(tmp_path / "precious", folder=False)
    before = snapshot(target)
    plant(state / "lock", target, nobody)
    code, output = start_daemon.refused(
        "--db", database.dsn, state_dir=state, twistd=("--uid", "nobody", "--gid", str(nobody.pw_gid)),
    )
    assert (code, output) == (
        1,
        [f"twistd blip: --state-dir: {state}/lock is a symbolic link, where a regular file should be:"
         " remove it"],
    )
    assert snapshot(target) == before


def _folder_of(path: Path, user: pwd.struct_passwd) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _cluster_folder(state: Path) -> Path:
    return state / "pg"


def _socket_folder(state: Path) -> Path:
    return _folder_of(state / "pg", server_user(0)) / "run"


def _settings_file(state: Path) -> Path:
    postgres = server_user(0)
    data = _folder_of(_folder_of(state / "pg", postgres) / "data", postgres)
    (data / "PG_VERSION").write_text("15\n")
    os.chown(data / "PG_VERSION", postgres.pw_uid, postgres.pw_gid)
    return data / "blip.conf"


@pytest.mark.parametrize(
    "where, folder",
    [(_cluster_folder, True), (_socket_folder, True), (_settings_file, False)],
    ids=["pg", "pg/run", "pg/data/blip.conf"],
)
def test_a_link_in_the_embedded_cluster_is_refused(
    start_daemon, state, tmp_path, where: Callable[[Path], Path], folder: bool
) -> None:
    """
    Running as root, the daemon runs the embedded server as ``postgres``,
    who owns the cluster's folder: a link that account put at the
    cluster's folder, its socket folder or the settings file an older
    blipserver wrote is refused, and nothing is done to what it points at.
    """
    link = where(state)
    target = roots_file(tmp_path / "precious", folder)
    before = snapshot(target)
    plant(link, target, server_user(0))
    code, output = start_daemon.refused("--simulate", state_dir=state)
    kind = "folder" if folder else "regular file"
    assert (code, output) == (
        1,
        [f"twistd blip: embedded database: {link} is a symbolic link, where a {kind} should be:"
         " remove it"],
    )
    assert snapshot(target) == before


def test_a_link_at_the_socket_folder_in_the_temporary_directory_is_refused(
    start_daemon, state, tmp_path
) -> None:
    """
    A state dir too deep for a socket path puts the socket folder in the
    system's temporary directory, under a name anyone can work out: a
    link any user put there first is refused, and the folder it points at
    is not given to ``postgres``.
    """
    deep = state / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    for folder in (deep.parent, deep):
        folder.chmod(0o755)
    link = Cluster.at(deep / "pg").sockets
    assert not str(link).startswith(str(state))
    target = roots_file(tmp_path / "precious", folder=True)
    before = snapshot(target)
    plant(link, target, pwd.getpwnam("nobody"))
    try:
        code, output = start_daemon.refused("--simulate", state_dir=deep)
    finally:
        link.unlink()
    assert (code, output) == (
        1,
        [f"twistd blip: embedded database: {link} is a symbolic link, where a folder should be:"
         " remove it"],
    )
    assert snapshot(target) == before
