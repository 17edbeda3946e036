"""
Started as root, the daemon does nothing through a path that a less
privileged account controls: the state dir's lock when twistd --uid/--gid
make the daemon another user. Each test plants a link there, as that
account would, to a file of root's; the daemon refuses to start, in one
line naming the link, and the file is as it was.
"""

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_a_link_at_the_lock_is_refused_before_the_switch(start_daemon, database, state, tmp_path) -> None:
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
