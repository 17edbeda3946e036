"""
Tests of what is done in folders another account controls: nothing is
followed through a link, and a file or folder of the wrong type, owner or
mode is refused, naming it.
"""

import os
import pwd
import stat
from pathlib import Path

import pytest

from blip.common.owned import Folder, Unsafe, WrongOwner, open_file


@pytest.fixture
def nobody() -> tuple[int, int]:
    """The user and group of ``nobody``, to whom the tests give folders (as root)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (files of other users): run the tests as root")
    user = pwd.getpwnam("nobody")
    return user.pw_uid, user.pw_gid


def test_a_folder_is_made_for_its_owner_or_checked(tmp_path: Path, nobody: tuple[int, int]) -> None:
    """
    A missing folder is made private and given to its owner; one that is
    there must be a folder of that owner (and private when asked): a link,
    a file, or a folder of another user is refused, naming it.
    """
    target = tmp_path / "target"
    target.mkdir()
    with Folder.trusted(tmp_path) as parent:
        parent.folder("made", nobody).close()
        info = (tmp_path / "made").lstat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody[0], 0o700)
        parent.folder("made", nobody, create=False, private=True).close()

        (tmp_path / "link").symlink_to(target)
        (tmp_path / "file").write_text("")
        for name, why in (("link", "is a symbolic link, where a folder should be"),
                          ("file", "is not a folder")):
            for create in (True, False):
                with pytest.raises(Unsafe, match=f"^{tmp_path / name} {why}: remove it$"):
                    parent.folder(name, nobody, create=create)
        assert target.stat().st_uid == 0
        with pytest.raises(WrongOwner, match=f"^{target} belongs to user root, not to nobody$"):
            parent.folder("target", nobody)
        os.chown(target, *nobody)
        with pytest.raises(Unsafe, match=f"^{target} is open to other users .mode 0755."):
            parent.folder("target", nobody, private=True)
        with pytest.raises(FileNotFoundError):
            parent.folder("missing", nobody, create=False)


def test_a_file_is_replaced_never_written_through(tmp_path: Path, nobody: tuple[int, int]) -> None:
    """
    Writing a file puts a new file of its owner's in its place: a link
    there is refused, and the file it points at keeps its content; a
    second name of a file is refused when read or opened; reading a link
    is refused too.
    """
    precious = tmp_path / "precious"
    precious.write_text("keep\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    with Folder.trusted(folder) as opened:
        opened.write("settings", b"one\n", nobody)
        opened.write("settings", b"two\n", nobody)
        info = (folder / "settings").lstat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody[0], 0o600)
        assert opened.read("settings", {nobody[0]}) == b"two\n"
        assert sorted(os.listdir(folder)) == ["settings"]
        assert opened.read("missing", {nobody[0]}) is None

        (folder / "link").symlink_to(precious)
        with pytest.raises(Unsafe, match="link is a symbolic link"):
            opened.write("link", b"overwritten\n", nobody)
        with pytest.raises(Unsafe, match="link is a symbolic link"):
            opened.read("link", {0, nobody[0]})
        with pytest.raises(Unsafe, match="link is a symbolic link"):
            opened.remove("link", {0, nobody[0]})
        os.link(precious, folder / "second")
        with pytest.raises(Unsafe, match="second has 2 names"):
            opened.read("second", {0})
        with pytest.raises(Unsafe, match="second has 2 names"):
            open_file(folder / "second", {0})
        assert opened.remove("settings", {nobody[0]}) is True
        assert opened.remove("settings", {nobody[0]}) is False
    assert precious.read_text() == "keep\n"
