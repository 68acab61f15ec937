"""``python -m tools.attack TOOL``: see :mod:`tools.attack`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
