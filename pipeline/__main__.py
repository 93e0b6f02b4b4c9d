"""``python -m pipeline`` is the ``dimflow`` console script (with its Ctrl-C / SIGTERM handling)."""

import sys

from pipeline.cli import console_main

sys.exit(console_main())
