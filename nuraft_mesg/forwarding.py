"""Forwarding a follower's write to its group's leader (``RaftParams.auto_forwarding``).

Separate from :mod:`nuraft_mesg.manager` because it is one self-contained protocol step --
send a client_request, follow a refusal that names a newer leader, read the per-entry
results, wait until they are applied here -- that also defines how any client reads a
leader's answer (:func:`client_results`, used by :mod:`nuraft_mesg.client`).
"""

from __future__ import annotations

from nuraft_mesg.errors import Failed, NotLeader, RaftError, ResultCode
from nuraft_mesg.group import RaftGroup
from nuraft_mesg.raft.node import NO_LEADER
from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport.base import Transport, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope

__all__ = ["client_results", "forward_to_leader"]

_MAX_FORWARD_HOPS = 4
"""Leaders tried by one forwarded write (a refusal may name a newer leader)."""


def client_results(resp: Message, count: int) -> list[bytes]:
    """The per-entry results of an accepted client_request of ``count`` entries.

    Raises:
        Failed: the answer does not hold one result per entry (only a one-entry request
            may rely on NuRaft's ``context``, which is the last result: a C++ leader).
    """
    if len(resp.results) == count:
        return list(resp.results)
    if count == 1 and not resp.results:
        return [resp.context]
    raise Failed(f"the leader applied {count} entries but returned {len(resp.results)} "
                 "results")


async def forward_to_leader(
    transport: Transport, server_id: int, group: RaftGroup, leader: int, data: list[bytes],
    *, request_timeout: float,
) -> list[bytes]:
    """Send a client_request to the leader, which answers once the entries are committed
    and applied there, with their results; return those once the entries are applied
    here too (a write forwarded through this node is visible in its state machine).

    A refusal naming another leader is followed (nothing was appended: resending is
    safe) up to :data:`_MAX_FORWARD_HOPS` times; any other refusal, or an answer without
    one result per entry, raises its typed error.  ``request_timeout`` bounds each call to
    a leader (the caller bounds the whole)."""
    for _ in range(_MAX_FORWARD_HOPS):
        leader_uuid = group.endpoint_of(leader)
        if not leader_uuid or leader == server_id:
            raise NotLeader(NO_LEADER, "no leader to forward to")
        msg = Message(MsgType.CLIENT_REQUEST, 0, server_id, leader,
                      entries=tuple(LogEntry(0, LogType.APP, d) for d in data))
        env = GroupEnvelope(group.group_id, group.group_type, leader_uuid, msg)
        try:
            reply = await transport.call(leader_uuid, env, timeout=request_timeout)
        except TransportError as exc:
            raise RaftError.for_code(exc.code,
                                     f"forwarding to the leader failed: {exc}") from None
        resp = reply.message
        if resp.accepted:
            break
        if resp.result_code == ResultCode.NOT_LEADER and resp.dest not in (
                NO_LEADER, leader, server_id):
            leader = resp.dest  # the leader moved on: nothing was appended
            continue
        raise RaftError.for_code(resp.result_code, "the leader refused the request",
                                 leader_id=resp.dest)
    else:
        raise NotLeader(NO_LEADER, "leadership kept moving while forwarding")
    results = client_results(resp, len(data))
    last = resp.next_index - 1
    await group.wait_for(lambda: group.applied_index >= last)
    return results
