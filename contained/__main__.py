"""`python -m contained`: the same as the `contained` console script."""

import sys

from contained.cli import main

sys.exit(main())
