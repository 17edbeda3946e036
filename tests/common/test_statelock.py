"""
Tests of the state dir's lock: one daemon per state dir, and a lock file
taken only when it is a file of the daemon's own (the state dir of a
daemon started as root may belong to the user it switches to, who could
have put anything there).
"""

import os
import pwd
from pathlib import Path

import pytest

from blip.common.owned import Unsafe
from blip.common.statelock import StateDirInUse, hold


def as_root() -> None:
    """Fail unless the tests run as root (files of other users)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (files of other users): run the tests as root")


def test_one_process_holds_the_state_dir(tmp_path: Path) -> None:
    """
    The lock is held while its file is open, with the holder's process id
    in it; another attempt is refused naming that process; once closed, the
    state dir can be taken again.
    """
    lock = hold(tmp_path)
    assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
    # flock locks belong to the open file: a second open is refused as
    # another process's would be.
    with pytest.raises(StateDirInUse, match=f"{tmp_path} is in use by blipserver process {os.getpid()}"):
        hold(tmp_path)
    lock.close()
    hold(tmp_path).close()


def test_a_link_or_a_fifo_at_the_lock_is_refused(tmp_path: Path) -> None:
    """
    A link at the lock's place is refused without following it (the file
    it points at keeps its content), and so is a FIFO (without waiting for
    a writer).
    """
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "precious"
    target.write_text("keep\n")
    (state / "lock").symlink_to(target)
    with pytest.raises(Unsafe, match=f"^{state}/lock is a symbolic link, where a regular file"):
        hold(state)
    assert target.read_text() == "keep\n"
    (state / "lock").unlink()
    os.mkfifo(state / "lock")
    with pytest.raises(Unsafe, match="is not a regular file"):
        hold(state)


def test_the_lock_is_given_to_the_user_the_daemon_becomes(tmp_path: Path) -> None:
    """
    Started as root for another user, the daemon gives that user the lock
    (one it makes, or one left by a start as root); a second name of a
    file of root's (a hard link that user made) is refused, and so is a
    lock of a third user.
    """
    as_root()
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, *owner)
    hold(state, owner).close()
    assert (state / "lock").stat().st_uid == nobody.pw_uid
    os.chown(state / "lock", 0, 0)
    hold(state, owner).close()
    assert (state / "lock").stat().st_uid == nobody.pw_uid

    (state / "lock").unlink()
    target = tmp_path / "precious"
    target.write_text("keep\n")
    os.link(target, state / "lock")
    with pytest.raises(Unsafe, match=f"^{state}/lock has 2 names"):
        hold(state, owner)
    assert (target.read_text(), target.stat().st_uid) == ("keep\n", 0)

    (state / "lock").unlink()
    (state / "lock").write_text("")
    os.chown(state / "lock", 1, 1)
    third = pwd.getpwuid(1).pw_name
    with pytest.raises(Unsafe, match=f"belongs to user {third}, not to nobody or root"):
        hold(state, owner)
