"""``python -m contained.workbook OUT_DIR``: execute every notebook into OUT_DIR (`main`)."""

import sys

from contained.workbook.execute import main

sys.exit(main())
