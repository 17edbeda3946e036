"""
``python -m blip``: the ``blip`` command (see :mod:`blip.cli.main`).
"""

import sys

from blip.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
