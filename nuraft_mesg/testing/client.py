"""An external client of a group: writes without hosting it, over RaftStep.

It sends NuRaft ``client_request`` messages to a node; the leader answers once the entries
are committed *and applied* there (so an accepted answer means "durable on a quorum"), and a
follower or a stale leader answers NOT_LEADER naming the leader it knows, which the client
tries next.  Each :meth:`RaftClient.append` is one attempt: on any error the entries may or
may not have been committed, so a caller that must not duplicate them never resends the same
payload blindly (tests use unique payloads and check exactly that).
"""

from __future__ import annotations

import random
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from nuraft_mesg.errors import NotLeader, RaftError
from nuraft_mesg.manager import to_server_id
from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport.base import TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc import GrpcTransport

__all__ = ["Ack", "RaftClient"]


@dataclass(frozen=True, slots=True)
class Ack:
    """An accepted write: the index of its last entry, the node that accepted it and the
    state machine's result for the last entry."""

    last_index: int
    leader: str
    result: bytes


class RaftClient:
    """Writes to ``group_id`` through the nodes in ``peers`` (uuid -> "host:port")."""

    def __init__(
        self,
        peers: dict[str, str],
        group_id: str,
        group_type: str = "",
        *,
        client_uuid: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.peers = dict(peers)
        self.group_id = group_id
        self.group_type = group_type
        self.client_uuid = client_uuid or str(uuidlib.uuid4())
        self.leader: str | None = None
        self._rng = rng or random.Random()
        self._transport = GrpcTransport(server_uuid=self.client_uuid,
                                        lookup_peer=lambda p: self.peers.get(p, ""))

    async def __aenter__(self) -> RaftClient:
        await self._transport.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        return await self._transport.__aexit__(exc_type, exc, tb)

    async def append(self, entries: Sequence[bytes], *, timeout: float = 3.0) -> Ack:  # noqa: ASYNC109
        """One attempt to replicate ``entries``.

        Raises:
            RaftError: refused or failed (NotLeader names the leader to try next, which the
                client remembers); the entries may still have been committed.
        """
        target = self.leader or self._rng.choice(sorted(self.peers))
        msg = Message(
            MsgType.CLIENT_REQUEST, 0, to_server_id(self.client_uuid), to_server_id(target),
            entries=tuple(LogEntry(0, LogType.APP, bytes(e)) for e in entries),
        )
        try:
            reply = await self._transport.call(
                target, GroupEnvelope(self.group_id, self.group_type, target, msg),
                timeout=timeout,
            )
        except TransportError as exc:
            self.leader = None
            raise RaftError.for_code(exc.code, f"{target}: {exc}") from None
        resp = reply.message
        if resp.accepted:
            self.leader = target
            return Ack(resp.next_index - 1, target, resp.context)
        hint = reply.dest_addr if reply.dest_addr in self.peers else None
        self.leader = hint
        error = RaftError.for_code(resp.result_code, f"{target} refused the write",
                                   leader_id=resp.dest)
        if isinstance(error, NotLeader) and hint is None:
            self.leader = None
        raise error
