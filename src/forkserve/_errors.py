"""The exceptions forkserve raises, and the exit codes they map to.

The tree::

    ForkserveError              any failure forkserve reports as one line, no traceback
    ├── UsageError              exit 100: bad arguments or configuration (permanent)
    │   ├── AddressError        a listen or connect address that does not parse or resolve
    │   ├── ProgramError        exec mode: the program is not found or not executable
    │   ├── HandlerError        --handler: a name that does not import or is not callable
    │   └── TLSConfigError      --tls-cert/--tls-key/--tls-client-ca that do not load
    └── TemporaryError          exit 111: a system or temporary failure
        └── BindError           the address is in use, not ours, or not permitted
    ProxyProtocolError          a peer's PROXY header is malformed (no exit code: the child
                                closes that connection and logs ``reject reason=proxy``)

Exit codes follow djb's and skarnet's tools: 100 means "fix the command line",
111 means "the system said no; trying again later may work".
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 100
EXIT_TEMPORARY = 111


class ForkserveError(Exception):
    """Base class: a failure reported as one line and an exit code."""

    exit_code = EXIT_TEMPORARY


class UsageError(ForkserveError):
    """Bad arguments or configuration: exit 100."""

    exit_code = EXIT_USAGE


class AddressError(UsageError):
    """An address that does not parse or does not resolve."""


class ProgramError(UsageError):
    """Exec mode's program is not found, not a file, or not executable (at start-up)."""


class HandlerError(UsageError):
    """A handler name that does not import, does not exist, or is not callable."""


class TemporaryError(ForkserveError):
    """A system or temporary failure: exit 111."""

    exit_code = EXIT_TEMPORARY


class BindError(TemporaryError):
    """The listening socket could not be bound (in use, not local, not permitted)."""


class TLSConfigError(UsageError):
    """A certificate, key or CA file that does not load (at start-up: exit 100)."""


class ProxyProtocolError(Exception):
    """A PROXY protocol header that is malformed: the connection is refused.

    Attributes:
        reason: a short name for the kind of fault (``signature``, ``v1-too-long``,
            ``length``, ``family``, ...), the ``detail`` field's prefix in the log.
        detail: what exactly was wrong, for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
