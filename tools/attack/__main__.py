"""``python -m tools.attack TOOL``: see :mod:`tools.attack`."""

import sys

from .cli import main

sys.exit(main())
