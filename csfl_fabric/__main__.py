"""``python -m csfl_fabric`` is the ``csfl-fabric`` command."""

import sys

from csfl_fabric.cli import main

sys.exit(main())
