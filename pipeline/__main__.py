"""``python -m pipeline`` is the ``dimflow`` console script."""

import sys

from pipeline.cli import main

sys.exit(main())
