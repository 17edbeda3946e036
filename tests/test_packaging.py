"""
What an installed blipserver holds: a wheel built from this tree carries
the page, the schema and the twistd plugin, not only the Python modules
(tests and ``make demo`` run from the tree and would not notice).
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_the_wheel_carries_the_page_schema_and_plugin(tmp_path: Path) -> None:
    """
    Every file of static/ is in the wheel under blip/static/, with
    blip/schema.sql and the twistd plugin, so that ``pip install`` gives a
    daemon that serves its page.
    """
    # From a copy: a build/ folder left in the tree would be packed again.
    source = tmp_path / "source"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    for name in files:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("blipserver-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    page = {
        "blip/static/" + path.relative_to(ROOT / "static").as_posix()
        for path in (ROOT / "static").rglob("*")
        if path.is_file()
    }
    assert "blip/static/index.html" in page
    assert page - names == set()
    assert {"blip/schema.sql", "twisted/plugins/blip_plugin.py", "blip/service.py"} <= names
