"""The parent's connection lines, in one place: accept, end, deny, reject, fork-failed.

Both process models write them through one ``Events`` object, so a field or an
errno's spelling is the same in fork mode and prefork (an errno is its name,
``EAGAIN``, never strerror text). Children write their own ``deny``/``reject`` lines
(see child.ask, child.edge): they are not the parent's.
"""

from __future__ import annotations

from forkserve.core.errnames import errno_name

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from forkserve._log import Log


class Events:
    """Writes the connection lines to ``log``; ``active()`` gives ``conns=busy/limit``."""

    __slots__ = ("active", "log")

    def __init__(self, log: Log, active: Callable[[], str]) -> None:
        self.log = log
        self.active = active

    def accept(self, peer: str, pid: int, conn: int | None = None) -> None:
        """``conn``: async mode's connection number in worker ``pid``."""
        if conn is None:
            self.log.info("accept", peer=peer, pid=pid, conns=self.active())
        else:
            self.log.info("accept", peer=peer, pid=pid, conn=conn, conns=self.active())

    def end(
        self,
        pid: int,
        peer: str,
        status: dict[str, object],
        seconds: float,
        conn: int | None = None,
    ) -> None:
        """``status``: the exit's fields (``exit=N`` or ``signal=...``, see Exited);
        ``conn``: async mode's connection number in worker ``pid``."""
        fields: dict[str, object] = {"pid": pid, "peer": peer}
        if conn is not None:
            fields["conn"] = conn
        fields.update(status)
        fields["duration"] = f"{seconds:.3f}s"
        fields["conns"] = self.active()
        self.log.info("end", **fields)

    def deny(self, peer: str, rule: str) -> None:
        self.log.info("deny", peer=peer, rule=rule)

    def reject(self, peer: str, reason: str, pid: int | None = None) -> None:
        """A per-source limit refused ``peer`` (``pid``: the process that asked)."""
        if pid is None:
            self.log.info("reject", peer=peer, reason=reason, conns=self.active())
        else:
            self.log.info("reject", pid=pid, peer=peer, reason=reason, conns=self.active())

    def fork_failed(self, number: int | None, **fields: object) -> str:
        """A fork (or what it needed first) failed with errno ``number``: logged
        with ``fields`` (``peer=``, or ``workers=``); returns the errno's name."""
        name = errno_name(number)
        self.log.warning("fork-failed", **fields, error=name)
        return name
