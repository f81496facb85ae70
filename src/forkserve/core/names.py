"""Names the settings, the parent and the pool share, spelled once (pure)."""

from __future__ import annotations

# The process models (--mode).
FORK = "fork"
PREFORK = "prefork"
ASYNC = "async"
MODES = (FORK, PREFORK, ASYNC)
# The prefork pool's settings, in the order the pool and its checks take them.
POOL_SETTINGS = ("min_spare", "max_spare", "max_workers", "max_requests")
# The per-connection resource limits (--limit-NAME; child.prelude sets them).
RLIMIT_NAMES = ("nofile", "as", "cpu", "nproc")
