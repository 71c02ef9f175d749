"""``python -m lightning_wsss`` is the same as ``wsss``."""

import sys

from .cli.main import main

sys.exit(main())
