"""``python -m forkserve``."""

from __future__ import annotations

import sys

from forkserve._cli import main

sys.exit(main())
