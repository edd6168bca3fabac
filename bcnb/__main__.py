"""``python -m bcnb``: the same as the ``bcnb`` command."""

import sys

from bcnb.cli import main

sys.exit(main())
