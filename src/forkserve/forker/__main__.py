"""``python -m forkserve.forker FD``: the supervisor starts the forker so."""

import sys

from forkserve.forker.process import main

sys.exit(main(sys.argv[1:]))
