"""Admission control: a bound on the writes waiting for their commit, per group and per node.

Without it a saturated leader queues every write it is handed; each extra one only adds to
everybody's latency, until writes time out, heartbeats fall behind the queue and followers
start elections -- more load, not less.  A write over either bound is refused at once with
:class:`~nuraft_mesg.errors.Busy` (nothing appended), so the caller backs off instead.

One counter pair per Manager, touched only from trio tasks (no locks); ``enter``/``leave``
rather than a context manager because this sits on every write's path.
"""

from __future__ import annotations

from nuraft_mesg.errors import Busy

__all__ = ["Admission"]


class Admission:
    """Counts admitted writes (``append_entries`` calls and client requests) until they
    are answered; refuses one that would exceed the group's or the node's bound."""

    __slots__ = ("_by_group", "limit", "pending", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """The node-wide bound (``ManagerConfig.max_pending_proposals``)."""
        self.pending = 0
        """Writes admitted on this node and not answered yet."""
        self.refused = 0
        """Writes refused with Busy since the Manager started."""
        self._by_group: dict[str, int] = {}

    def pending_in(self, group_id: str) -> int:
        return self._by_group.get(group_id, 0)

    def enter(self, group_id: str, group_limit: int) -> None:
        """Admit one write to ``group_id`` (bound ``group_limit``); every successful call
        must be paired with one :meth:`leave`.

        Raises:
            Busy: the group or the node is at its bound (nothing was counted).
        """
        n = self._by_group.get(group_id, 0)
        if n >= group_limit or self.pending >= self.limit:
            self.refused += 1
            which = (f"group {group_id} has {n}" if n >= group_limit
                     else f"this node has {self.pending}")
            raise Busy(f"{which} writes waiting for their commit (at its bound)")
        self._by_group[group_id] = n + 1
        self.pending += 1

    def leave(self, group_id: str) -> None:
        self.pending -= 1
        n = self._by_group[group_id] - 1
        if n:
            self._by_group[group_id] = n
        else:
            del self._by_group[group_id]
