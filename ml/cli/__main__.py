"""``python -m ml.cli``: the same as the ``rekindle`` command."""

import sys

from ml.cli import main

sys.exit(main())
