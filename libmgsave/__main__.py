"""``python -m libmgsave`` is the same as the ``mgsave`` command."""

import sys

from libmgsave.cli import main

sys.exit(main())
