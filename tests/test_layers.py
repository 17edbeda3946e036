"""
The shape of the package holds: import-linter reads every import of
``blip`` and finds none that breaks the contracts in setup.cfg (each
package imports only those below it; the adapters never import each
other).
"""

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_imports_keep_the_layers(tmp_path: Path) -> None:
    """
    ``lint-imports`` keeps every contract; on failure, its report names the
    imports that break one.
    """
    program = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(program), "--config", str(ROOT / "setup.cfg"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"lint-imports found broken contracts:\n{result.stdout}{result.stderr}"
    assert "0 broken" in result.stdout
