"""``python -m voco_backend``."""

import sys

from voco_backend.cli import main

sys.exit(main())
