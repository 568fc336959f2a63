"""Result codes and the exception hierarchy.

NuRaft reports outcomes as ``cmd_result_code`` values; nuraft_mesg carries them on the wire
negated (``wire = -code``).  We keep NuRaft's numbers in :class:`ResultCode` so that logs,
wire messages and exceptions all speak the same vocabulary, and raise one exception class per
code so that callers can ``except NotLeader`` instead of comparing integers.

This module is plain Python: the sans-IO core raises these too.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ResultCode(enum.IntEnum):
    """NuRaft's ``cmd_result_code`` (negative numbers are failures)."""

    OK = 0
    CANCELLED = -1
    TIMEOUT = -2
    NOT_LEADER = -3
    BAD_REQUEST = -4
    SERVER_ALREADY_EXISTS = -5
    CONFIG_CHANGING = -6
    SERVER_IS_JOINING = -7
    SERVER_NOT_FOUND = -8
    CANNOT_REMOVE_LEADER = -9
    SERVER_IS_LEAVING = -10
    TERM_MISMATCH = -11
    RESULT_NOT_EXIST_YET = -10000
    FAILED = -32768

    @property
    def wire(self) -> int:
        """The value nuraft_mesg puts in ``RCResponse.result_code`` (the negated code)."""
        return -int(self)

    @classmethod
    def from_wire(cls, value: int) -> ResultCode:
        """Decode a wire value; unknown values become FAILED rather than raising."""
        try:
            return cls(-value)
        except ValueError:
            return cls.FAILED


class RaftError(Exception):
    """Base of every error this library raises on purpose.

    ``code`` is the NuRaft result code, so code that must map errors back onto the wire (or
    compare with nuraft_mesg's tables) never has to parse messages.
    """

    code: ClassVar[ResultCode] = ResultCode.FAILED

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.name)

    @staticmethod
    def for_code(code: ResultCode, message: str = "", *, leader_id: int = -1) -> RaftError:
        """Build the exception subclass that matches ``code``."""
        if code == ResultCode.NOT_LEADER:
            return NotLeader(leader_id, message)
        cls = _BY_CODE.get(code, Failed)
        return cls(message)


class Cancelled(RaftError):
    """The operation was abandoned (for example the wait for leadership ran out)."""

    code = ResultCode.CANCELLED


class RaftTimeout(RaftError):
    """The operation did not finish in time.  Its effect may still happen later."""

    code = ResultCode.TIMEOUT


class NotLeader(RaftError):
    """Only the leader can do this.  ``leader_id`` is the leader this node knows of, or -1."""

    code = ResultCode.NOT_LEADER

    def __init__(self, leader_id: int = -1, message: str = "") -> None:
        self.leader_id = leader_id
        super().__init__(message or f"NOT_LEADER (leader is {leader_id})")


class BadRequest(RaftError):
    """The request is malformed or not allowed in this state."""

    code = ResultCode.BAD_REQUEST


class QueryNotSupported(BadRequest):
    """The group's state machine answers no read-only queries (it does not override
    :meth:`~nuraft_mesg.storage.interfaces.StateMachine.query`)."""


class ServerAlreadyExists(RaftError):
    code = ResultCode.SERVER_ALREADY_EXISTS


class ConfigChanging(RaftError):
    """Another membership change is still in progress; retry after it commits."""

    code = ResultCode.CONFIG_CHANGING


class ServerIsJoining(RaftError):
    """A new server is still catching up before its config entry is appended; retry later."""

    code = ResultCode.SERVER_IS_JOINING


class ServerNotFound(RaftError):
    """Unknown group, peer or server id."""

    code = ResultCode.SERVER_NOT_FOUND


class CannotRemoveLeader(RaftError):
    code = ResultCode.CANNOT_REMOVE_LEADER


class ServerIsLeaving(RaftError):
    code = ResultCode.SERVER_IS_LEAVING


class TermMismatch(RaftError):
    """The entry was replaced by another leader's entry: it will never commit."""

    code = ResultCode.TERM_MISMATCH


class Failed(RaftError):
    code = ResultCode.FAILED


class ResultUnknown(Failed):
    """The entries were committed, but their state machine results never existed on this
    node: it received them inside a snapshot (a newer leader's) instead of applying them one
    by one.  The write took effect exactly once; only its result is lost.  Read the state
    back (or use a client session, whose retry answers with the recorded result)."""


class StorageError(Failed):
    """A durable store could not read or write (disk full, read-only, I/O error, corrupt
    data).  Nothing the failed operation wrote may be relied on; the group that hit it stops
    on this node (see :mod:`nuraft_mesg.storage.interfaces`)."""


class SessionExpired(RaftError):
    """The cluster no longer knows this client session (evicted by the session limit, or
    closed), so it cannot tell whether a retried write was applied: the write is refused,
    never applied a second time.  Open a new session (see :mod:`nuraft_mesg.sessions`)."""


_BY_CODE: dict[ResultCode, type[RaftError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        RaftTimeout,
        BadRequest,
        ServerAlreadyExists,
        ConfigChanging,
        ServerIsJoining,
        ServerNotFound,
        CannotRemoveLeader,
        ServerIsLeaving,
        TermMismatch,
        Failed,
    )
}
