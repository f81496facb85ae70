from __future__ import annotations

from hypothesis import settings

# The machines are shared and noisy: a slow example is not a failure.
settings.register_profile("forkserve", deadline=None)
settings.load_profile("forkserve")
