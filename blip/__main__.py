"""
``python -m blip``: the ``blip`` command (see :mod:`blip.commands`).
"""

import sys

from blip.commands import main

if __name__ == "__main__":
    sys.exit(main())
