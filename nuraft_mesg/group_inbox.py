"""What travels through a group's inbox, and the waiters for applied entries.

Separate from :mod:`nuraft_mesg.group` so that the loop reads as "take an item, hand it to
the core" without the item definitions in the way; every type here is a plain slotted value
that the group's one task consumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from nuraft_mesg.oneshot import Callback, Slot
from nuraft_mesg.raft.node import Proposal, RaftNode
from nuraft_mesg.raft.types import Message
from nuraft_mesg.reads import PendingRead

__all__ = [
    "TICK",
    "ApplyWaiter",
    "InboxCommand",
    "InboxItem",
    "InboxProposal",
    "InboxReply",
    "InboxRequest",
    "Tick",
]


@dataclass(slots=True)
class InboxRequest:
    message: Message
    reply: Slot[Message] | Callback[Message]
    applied: Slot[list[bytes]] | None = None
    """For an accepted client_request: its entries' apply results (see _answer)."""
    quiesce: bool = False
    """A heartbeat marked quiesce by its sender (and this group may go quiet)."""


@dataclass(slots=True)
class InboxReply:
    message: Message


@dataclass(slots=True)
class InboxCommand:
    fn: Callable[[RaftNode], object]
    result: Slot[object]


@dataclass(slots=True)
class InboxProposal:
    """A local write: ``applied`` completes with the entries' results once applied here, or
    fails (NotLeader, TermMismatch, ...); ``prop`` says where they landed once appended."""

    data: list[bytes]
    applied: Slot[list[bytes]] | Callback[list[bytes]] = field(default_factory=Slot)
    """A Slot for an awaiting writer, a Callback for a pipelined one (Manager.submit)."""
    prop: Proposal | None = None
    deadline: float = math.inf
    """When ``applied`` fails with RaftTimeout if still pending (the group's clock: one timer
    for all writes instead of a cancel scope per write, which cost a third of the hot path)."""


class Tick:
    """Inbox item from the node's timer task: a deadline of this group has passed."""

    __slots__ = ()


TICK = Tick()

InboxItem = InboxRequest | InboxReply | InboxCommand | InboxProposal | PendingRead | Tick


@dataclass(slots=True, eq=False)  # hashed by identity: _fail_everyone collects them in a set
class ApplyWaiter:
    """Waits until ``[first, last]`` are applied here with ``term``; collects results."""

    term: int
    first: int
    last: int
    results: list[bytes] = field(default_factory=list)
    slot: Slot[list[bytes]] | Callback[list[bytes]] = field(default_factory=Slot)

