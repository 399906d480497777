"""``python -m ml.cli``: the same as the ``rekindle`` command."""

import sys

from ml.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module as its main
    sys.exit(main())
