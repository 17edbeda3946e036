"""
The type hints are checked: mypy, with the settings in setup.cfg, reads the
package and the twistd plugin and finds nothing wrong, so that the hints
keep saying what the code does.
"""

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_mypy_finds_no_errors(tmp_path: Path) -> None:
    """
    mypy finds no error in ``blip`` and ``twisted/plugins`` (its cache in a
    fresh directory, so that nothing left from an earlier run hides one);
    on failure, mypy's report is shown.
    """
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "setup.cfg"),
            "--cache-dir", str(tmp_path / "mypy-cache"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"mypy found errors:\n{result.stdout}{result.stderr}"
