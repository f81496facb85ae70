"""Socket activation as systemd does it: ``listen_fds.py FDS NAMES COMMAND...``.

Moves the descriptors FDS (comma-separated) to 3, 4, ..., sets LISTEN_FDS, LISTEN_PID
(its own pid, which exec keeps) and LISTEN_FDNAMES (NAMES, colon-separated; "-" for
none), then execs COMMAND.
"""

from __future__ import annotations

import fcntl
import os
import sys

fds = [int(fd) for fd in sys.argv[1].split(",")]
names = sys.argv[2]
# Move out of the way first, so that no source is overwritten before it is moved.
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)  # inheritable
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
if names != "-":
    os.environ["LISTEN_FDNAMES"] = names
os.execv(sys.argv[3], sys.argv[3:])  # noqa: S606 - exec, as systemd does
