"""``python -m forkserve``."""

from __future__ import annotations

import sys

from forkserve.cli.main import main

sys.exit(main())
