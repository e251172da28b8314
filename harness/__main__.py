"""``python -m harness``: the same command line as the ``harness`` script."""

import os
import sys

# ``python -m`` puts the working folder first on sys.path, where a stray ``tqdm.py`` or
# ``pandas.py`` would shadow the installed package and run its code; the ``harness`` script does
# not. Plugin modules named with -p are still found there (harness.plugins appends the folder).
if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from harness.cli import entry_point  # noqa: E402

entry_point()
