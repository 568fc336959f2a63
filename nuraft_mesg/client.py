"""The external client: membership changes and writes from a process that hosts no group.

nuraft_mesg's ``grpc_factory::add_server / append_entry / rem_server`` (inventory §2.6)::

    peers = {"<uuid0>": "127.0.0.1:9000", "<uuid1>": "127.0.0.1:9001", ...}
    async with ExternalClient(peers) as client:
        await client.add_server(gid, uuid2, dest=uuid0)     # any member; redirects followed
        result = await client.append_entry(gid, b"hello", dest=uuid1)
        results = await client.append_entries(gid, [b"a", b"b"], dest=uuid1)  # one per entry
        await client.rem_server(gid, uuid2, dest=uuid0)

Each operation is one NuRaft request (add_server_request, client_request,
remove_server_request) sent over RaftStep to ``dest``:

* accepted: done.  ``append_entry`` returns the state machine's result for the entry
  (``append_entries`` one result per entry, in order): the node answers once they are
  committed *and applied* on the leader.  ``add_server`` returns once
  the leader has started the join (as NuRaft): the new member is in the configuration a
  little later, and a following membership change meanwhile gets SERVER_IS_JOINING /
  CONFIG_CHANGING, which this client retries;
* NOT_LEADER naming a leader (``dest_addr``): the request is sent again, freshly built, to
  that leader (up to :data:`MAX_REDIRECTS` hops per attempt);
* SERVER_IS_JOINING, CONFIG_CHANGING, or NOT_LEADER with no leader known (an election or a
  leadership transfer in progress): retried after a back-off that starts at 50 ms and
  doubles up to 1 s, for at most ``retry_timeout`` seconds in all;
* anything else raises the matching :mod:`nuraft_mesg.errors` exception.  A transport
  failure (peer unreachable, deadline) raises the mapped exception and is *not* retried: a
  write may or may not have been applied.

Peers are resolved through ``peers`` (a mapping uuid -> "host:port", or a callable like
``MessagingApplication.lookup_peer``), which must know every node a redirect may name.  A
``"host:port"`` string is also accepted where a node is expected for :meth:`status` and
:meth:`resolve`, which ask the node for its uuid (``Admin/Status``).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Final

import trio

from nuraft_mesg.errors import BadRequest, NotLeader, RaftError, ResultCode
from nuraft_mesg.manager import client_results, to_server_id
from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType, ServerConfig
from nuraft_mesg.reads import check_mode, encode_client_read
from nuraft_mesg.sessions import ClientSession
from nuraft_mesg.transport.base import TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc import DEFAULT_MAX_MESSAGE_SIZE, GrpcTransport, parse_address
from nuraft_mesg.transport.security import TlsConfig, TokenClient
from nuraft_mesg.transport.status import NodeStatus

__all__ = ["MAX_REDIRECTS", "ExternalClient"]

MAX_REDIRECTS: Final = 8
"""Leader redirects followed within one attempt (a loop guard while leadership moves)."""
_BACKOFF_START: Final = 0.05
_BACKOFF_MAX: Final = 1.0
_RETRYABLE: Final = frozenset({ResultCode.SERVER_IS_JOINING, ResultCode.CONFIG_CHANGING})


def _is_address(text: str) -> bool:
    try:
        parse_address(text)
    except ValueError:
        return False
    return True


class ExternalClient:
    """A client that is not a member of any group (see the module doc).

    Args:
        peers: uuid -> "host:port" (a dict is read at each connection, so it may be updated),
            or a callable returning "" for unknown peers.
        request_timeout: deadline of one request, in seconds (a write is answered after it
            is applied on the leader, within the node's ``client_request_timeout``).
        retry_timeout: total time spent retrying SERVER_IS_JOINING / CONFIG_CHANGING / no
            leader, in seconds.
        max_message_size, max_send_message_size, max_receive_message_size: message size
            limits, as in :class:`~nuraft_mesg.manager.ManagerConfig`.
        tls: TLS towards the nodes (its ``ca_file`` verifies them; ``cert_file``/``key_file``
            are the client certificate that nodes with mutual TLS require).
        token_client: adds its header to every call (nodes with a token verifier need it).
    """

    def __init__(
        self,
        peers: Mapping[str, str] | Callable[[str], str],
        *,
        request_timeout: float = 5.0,
        retry_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_send_message_size: int = 0,
        max_receive_message_size: int = 0,
        tls: TlsConfig | None = None,
        token_client: TokenClient | None = None,
    ) -> None:
        self._peers = peers
        self.request_timeout = request_timeout
        self.retry_timeout = retry_timeout
        self.client_uuid = str(uuidlib.uuid4())
        self._learned: dict[str, str] = {}
        self.transport = GrpcTransport(
            server_uuid=self.client_uuid,
            lookup_peer=self._lookup,
            max_message_size=max_message_size,
            max_send_message_size=max_send_message_size,
            max_receive_message_size=max_receive_message_size,
            tls=tls,
            token_client=token_client,
        )

    def _lookup(self, key: str) -> str:
        address = self._learned.get(key, "")
        if not address:
            address = self._peers(key) if callable(self._peers) else self._peers.get(key, "")
        if not address and _is_address(key):
            return key  # status calls by address
        return address

    async def __aenter__(self) -> ExternalClient:
        await self.transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self.transport.__aexit__(exc_type, exc, tb)

    # -- node queries ---------------------------------------------------------------------------
    async def status(self, node: str, group_ids: tuple[str, ...] = ()) -> NodeStatus:
        """``Admin/Status`` of ``node`` (a uuid the peers know, or "host:port")."""
        try:
            return await self.transport.status_call(
                node, group_ids, timeout=self.request_timeout
            )
        except TransportError as exc:
            raise RaftError.for_code(exc.code, f"status of {node} failed: {exc}") from None

    async def resolve(self, node: str) -> str:
        """The uuid of ``node``: ``node`` itself if it is a uuid, else (a "host:port") the
        uuid the node reports, which is then known to this client."""
        try:
            return str(uuidlib.UUID(node))
        except ValueError:
            pass
        status = await self.status(node)
        self._learned[status.server_uuid] = node
        return status.server_uuid

    # -- operations -----------------------------------------------------------------------------
    async def add_server(
        self,
        group_id: str,
        server_uuid: str,
        dest: str,
        *,
        priority: int = 1,
        learner: bool = False,
    ) -> None:
        """Add ``server_uuid`` to the group through ``dest`` (any member)."""
        srv = ServerConfig(to_server_id(server_uuid), str(uuidlib.UUID(server_uuid)),
                           priority=priority, learner=learner)
        entry = LogEntry(0, LogType.CLUSTER, srv.encode())
        await self._request(group_id, MsgType.ADD_SERVER_REQUEST, (entry,), dest)

    async def append_entry(self, group_id: str, data: bytes, dest: str) -> bytes:
        """Replicate ``data`` through ``dest``; returns the state machine's result."""
        (result,) = await self.append_entries(group_id, [data], dest)
        return result

    async def append_entries(self, group_id: str, entries: Sequence[bytes], dest: str
                             ) -> list[bytes]:
        """Replicate ``entries`` (one proposal) through ``dest``; returns the leader state
        machine's result for each entry, in order."""
        batch = tuple(LogEntry(0, LogType.APP, bytes(d)) for d in entries)
        if not batch:
            raise BadRequest("append_entries needs at least one entry")
        reply = await self._request(group_id, MsgType.CLIENT_REQUEST, batch, dest)
        return client_results(reply, len(batch))

    async def read(self, group_id: str, query: bytes, dest: str, *,
                   mode: str = "linearizable") -> bytes:
        """The answer of the group's state machine to ``query`` (``StateMachine.query``),
        read on ``dest`` (any member: a follower serves linearizable reads through the
        leader's read index) in ``mode`` (see docs/reads.md).  A refusal naming the leader is
        redirected there; no leader known is retried like a write.  Raises the mapped
        :mod:`nuraft_mesg.errors` exception otherwise (RaftTimeout: no quorum answered in
        time)."""
        entry = encode_client_read(check_mode(mode), query)
        reply = await self._request(group_id, MsgType.CLIENT_READ_REQUEST, (entry,), dest)
        return reply.context

    def session(self, dest: str | Sequence[str] = (), *,
                retry_timeout: float | None = None) -> ClientSession:
        """An exactly-once client session (see :mod:`nuraft_mesg.sessions`)::

            async with client.session() as s:
                result = await s.append_entry(gid, b"set x 1")

        Each write keeps its sequence number across retries -- timeouts, lost connections,
        leader changes -- for up to ``retry_timeout`` (default: this client's).  Attempts go
        to ``dest`` (a node uuid or several), by default every node of ``peers`` (when it is
        a mapping), moving to the next node after a failed attempt; redirects to the leader
        are followed as usual."""
        nodes = [dest] if isinstance(dest, str) else list(dest)
        if not nodes and not callable(self._peers):
            nodes = sorted(self._peers)
        if not nodes:
            raise BadRequest("a session needs the nodes to write through (dest)")
        turn = 0

        async def send(group_id: str, entries: list[bytes]) -> list[bytes]:
            nonlocal turn
            target = nodes[turn % len(nodes)]
            try:
                return await self.append_entries(group_id, entries, target)
            except RaftError:
                turn += 1  # the next attempt tries the next node
                raise

        timeout = self.retry_timeout if retry_timeout is None else retry_timeout
        return ClientSession(send, retry_timeout=timeout)

    async def rem_server(self, group_id: str, server: str | int, dest: str) -> None:
        """Remove ``server`` (a uuid or a server id) from the group through ``dest``."""
        sid = server if isinstance(server, int) else to_server_id(server)
        entry = LogEntry(0, LogType.CLUSTER, sid.to_bytes(4, "little", signed=True))
        await self._request(group_id, MsgType.REMOVE_SERVER_REQUEST, (entry,), dest)

    async def _request(self, group_id: str, mtype: MsgType, entries: tuple[LogEntry, ...],
                       dest: str) -> Message:
        origin = await self.resolve(dest)
        deadline = trio.current_time() + self.retry_timeout
        backoff = _BACKOFF_START
        while True:
            target = origin
            for _ in range(MAX_REDIRECTS + 1):
                reply = await self._send(group_id, mtype, entries, target)
                resp = reply.message
                if resp.accepted:
                    return resp
                code = resp.result_code
                nxt = reply.dest_addr
                if code == ResultCode.NOT_LEADER and nxt and nxt != target:
                    target = nxt  # a leader redirect: resend, freshly built, to the leader
                    continue
                break
            else:
                code, nxt = ResultCode.NOT_LEADER, ""  # leadership kept moving
            transient = code in _RETRYABLE or (code == ResultCode.NOT_LEADER and not nxt)
            if not transient or trio.current_time() + backoff > deadline:
                if code == ResultCode.NOT_LEADER:
                    raise NotLeader(resp.dest, f"{mtype.name} to {target}: no leader to "
                                               "redirect to")
                raise RaftError.for_code(code, f"{mtype.name} refused by {target}: {code.name}")
            await trio.sleep(backoff)  # a back-off, not synchronisation
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _send(self, group_id: str, mtype: MsgType, entries: tuple[LogEntry, ...],
                    target: str) -> GroupEnvelope:
        msg = Message(mtype, 0, 0, to_server_id(target), entries=entries)
        env = GroupEnvelope(group_id, "", target, msg)
        try:
            reply = await self.transport.call(target, env, timeout=self.request_timeout)
        except TransportError as exc:
            raise RaftError.for_code(exc.code, f"{mtype.name} to {target} failed: {exc}") from None
        if reply.message.type != mtype.response_type:
            raise RaftError.for_code(ResultCode.FAILED,
                                     f"{target} answered {reply.message.type.name}")
        return reply
