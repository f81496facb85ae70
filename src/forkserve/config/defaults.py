"""The defaults of ``forkserve serve`` and ``forkserve.Server``, spelled once (pure).

The settings table (config.table), the typed settings (config.values) and the
parent's modules read them from here, so the table needs nothing from the parent.
The names they share (the modes, the pool's settings) are in core.names.
"""

from __future__ import annotations

DEFAULT_MAX_CONNS = 1000
# Async mode's --max-conns when not given: an async worker holds a connection in a few
# KiB (docs/performance.md), so its limit is the descriptors, not the memory.
DEFAULT_ASYNC_MAX_CONNS = 10000
# The kernel queues completed handshakes here while forkserve is at --max-conns or busy
# forking; it is the only queue forkserve has (no accept-then-close). 1024 holds about
# half a second of the fork mode's accept rate measured on a 2-core machine, so a
# burst is absorbed, yet a client never waits minutes in a queue it cannot see. The
# kernel caps it at net.core.somaxconn (4096 by default since Linux 5.4).
DEFAULT_BACKLOG = 1024
DEFAULT_GRACE = 10.0
# How long a new master may take to report ready after SIGUSR2 (--upgrade-timeout).
DEFAULT_UPGRADE_TIMEOUT = 30.0
# Prefork pool defaults: a couple of spare workers keep the first connections of a
# burst from waiting for a fork; 64 workers of a few MiB each fit a small machine.
DEFAULT_MIN_SPARE = 2
DEFAULT_MAX_SPARE = 8
DEFAULT_MAX_WORKERS = 64
