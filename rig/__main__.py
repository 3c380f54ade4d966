"""Allow `python -m rig ...` as an equivalent of the `rig` console script."""

import sys

from rig.cli import main

sys.exit(main())
