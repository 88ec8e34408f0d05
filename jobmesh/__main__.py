"""``python -m jobmesh`` is the ``jobmesh`` command."""

import sys

from .cli import main

sys.exit(main())
