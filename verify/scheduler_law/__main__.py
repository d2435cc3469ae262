"""``python -m verify.scheduler_law [SCHEDULER] [--table]``: an audit's report, or the table of docs/schedulers.md."""

import sys

from . import _main

sys.exit(_main())
