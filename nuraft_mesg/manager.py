"""The Manager: one node, one RaftStep server, many Raft groups.

::

    async with Manager(ManagerConfig(server_uuid=me, port=0), app) as mgr:
        mgr.register_group_type("kv", RaftParams())
        await mgr.create_group(gid, "kv")           # waits until this node leads it
        await mgr.add_member(gid, peer_uuid)        # waits until the config holds the peer
        results = await mgr.append_entries(gid, [b"set x 1"])   # after commit and apply

Structure (and so shutdown order) is expressed by nesting, not by bookkeeping::

    nursery "infra":      the transport's server task; the liveness task (pings the nodes
                          that lead quiet groups here) and peer_lost probes
      PeerSender:         per-peer outbound queues and their workers
        nursery "groups": one task per group

Leaving the ``async with`` cancels the groups' nursery first and waits for every group to
stop; only then do the peer workers and finally the server stop (nuraft_mesg PR #101: raft
servers stop before the gRPC server).  No task outlives the block.

A group's server id is :func:`to_server_id` of its uuid, computed the same way on every node;
its endpoint (in configurations, in ``leader_id``) is the uuid string.
"""

from __future__ import annotations

import hashlib
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio

from nuraft_mesg.data_service import DataService, DataServiceHandler, Destination
from nuraft_mesg.errors import (
    BadRequest,
    Cancelled,
    Failed,
    NotLeader,
    RaftError,
    RaftTimeout,
    ResultCode,
    ServerNotFound,
)
from nuraft_mesg.group import GroupStatistics, PeerInfo, RaftGroup, ReplicaConfig
from nuraft_mesg.raft.node import NO_LEADER, Proposal, RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import (
    ClusterConfig,
    LogEntry,
    LogType,
    Message,
    MsgType,
    ServerConfig,
)
from nuraft_mesg.sessions import ClientSession
from nuraft_mesg.storage.interfaces import StateManager
from nuraft_mesg.storage.sqlite import SqliteStore
from nuraft_mesg.timers import Timers
from nuraft_mesg.transport.base import (
    DataRequest,
    Status,
    StepError,
    StepReply,
    Transport,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.peers import PeerSender, SenderStatistics
from nuraft_mesg.transport.security import TlsConfig, TokenClient, TokenVerifier
from nuraft_mesg.transport.status import NodeStatus

if TYPE_CHECKING:
    from nuraft_mesg.transport.grpc import GrpcTransport

__all__ = [
    "GroupContext",
    "Manager",
    "ManagerConfig",
    "MessagingApplication",
    "to_server_id",
]


_MAX_FORWARD_HOPS = 4
"""Leaders tried by one forwarded write (a refusal may name a newer leader)."""
_GENERAL_PATH = frozenset({MsgType.CLIENT_REQUEST, MsgType.ADD_SERVER_REQUEST})
"""Requests that :meth:`Manager.step_nowait` leaves to :meth:`Manager.raft_step`."""


def to_server_id(peer_uuid: str) -> int:
    """The Raft server id of a peer: a non-negative 31-bit hash of its uuid.

    nuraft_mesg uses boost's ``hash<uuid> >> 33``; we use the first 8 bytes of BLAKE2b over
    the uuid's 16 bytes, shifted right by 33, which is stable across processes, Python
    versions and machines (Python's own ``hash`` is salted per process).
    """
    raw = uuidlib.UUID(peer_uuid).bytes
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 33


@runtime_checkable
class MessagingApplication(Protocol):
    """What the application supplies (nuraft_mesg's ``MessagingApplication``)."""

    def lookup_peer(self, peer_id: str) -> str:
        """Resolve a peer uuid to ``"host:port"``; "" when unknown."""
        ...

    def create_state_mgr(self, server_id: int, group_id: str) -> StateManager:
        """Make the state manager of a group this node creates or is invited into."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerConfig:
    """nuraft_mesg's ``Manager::Params`` plus its dynamic settings, in seconds."""

    server_uuid: str
    port: int = 0
    """Listen port; 0 picks a free one (then read ``Manager.port``)."""
    host: str = "127.0.0.1"
    """Listen address.  nuraft_mesg binds 0.0.0.0; we default to loopback (expose a node
    beyond it with TLS and a token verifier: docs/security.md)."""
    default_group_type: str = ""
    """Group type used when an incoming join names none (nuraft_mesg's compatibility rule)."""
    leader_change_timeout: float = 3.2
    """How long create_group, add_member and become_leader wait (raft_leader_change_timeout)."""
    raft_request_timeout: float = 2.0
    """Deadline of one RaftStep to a peer (raft_request_deadline_secs)."""
    client_request_timeout: float = 3.0
    """How long append_entries waits for commit and apply (NuRaft's client_req_timeout)."""
    max_message_size: int = 64 << 20
    """Largest message sent or accepted, in bytes (Raft and data service alike), unless one of
    the next two says otherwise."""
    max_send_message_size: int = 0
    """Largest message this node sends (requests on its channels, replies from its server);
    0: ``max_message_size``.  A larger one fails with RESOURCE_EXHAUSTED before it is sent."""
    max_receive_message_size: int = 0
    """Largest message this node accepts (requests to its server, replies on its channels);
    0: ``max_message_size``.  A larger one is refused with RESOURCE_EXHAUSTED, for that call
    only."""
    ssl_cert: str = ""
    """PEM certificate (chain) of this node: the server's certificate and, on outbound
    channels, the client certificate.  With ``ssl_key``, turns TLS on for the server and every
    outbound channel (all nodes of a cluster must agree)."""
    ssl_key: str = ""
    """PEM private key of ``ssl_cert``."""
    ssl_ca: str = ""
    """PEM CA bundle that peers' certificates must chain to (nuraft_mesg's client CA file);
    empty: the system's trust store."""
    ssl_mutual: bool = False
    """Mutual TLS: the server requires a client certificate signed by ``ssl_ca`` (a peer
    without one cannot reach any group)."""
    ssl_server_name: str = ""
    """Name checked on peers' certificates (empty: the host dialled)."""
    token_client: TokenClient | None = None
    """Adds its ``(auth_header_key, get_token())`` header to every outbound call (RaftStep,
    data service, status)."""
    token_verifier: TokenVerifier | None = None
    """Checks every inbound call's metadata; a refusal is answered (UNAUTHENTICATED unless it
    says otherwise) before the request reaches any group or handler."""
    handshake_timeout: float = 10.0
    """Seconds an accepted connection has to finish its TLS handshake and HTTP/2 preface and
    start its first call (else it is dropped)."""
    request_read_timeout: float = 30.0
    """Seconds an incoming request has to arrive completely after its headers."""
    enable_data_service: bool = True
    """Serve and send data-service requests (:mod:`nuraft_mesg.data_service`).  On by default
    (nuraft_mesg's ``with_data_svc`` defaults to off): with nothing bound it costs nothing.
    Off: ``bind_data_service_request`` returns False, incoming calls get UNIMPLEMENTED and
    sends raise ServerNotFound."""
    data_request_timeout: float = 2.0
    """Deadline of one data-service call (data_request_deadline_secs)."""
    peer_queue_size: int = 16384
    """Outbound messages queued per peer before new ones are dropped (Raft retries); votes
    and heartbeats may use as many again (see :mod:`nuraft_mesg.transport.peers`)."""
    data_dir: str | None = None
    """Directory of the durable default store (``<data_dir>/nuraft.db``, see
    :mod:`nuraft_mesg.storage.sqlite`).  When set, the Manager persists the log, hard state and
    config of every group it hosts there (wrapping the application's state managers, which
    still supply the state machine, the initial config and the hooks), and on start rejoins
    every stored group as soon as its group type is registered.  None: the application's
    state managers persist everything themselves."""

    liveness_interval: float = 0.25
    """Node-level liveness for quiet groups (see ``RaftParams.quiesce_after_ms``): while a
    group here follows a quiet leader, that leader's node is pinged every this many seconds;
    when a ping is not answered within ``liveness_timeout``, every group it leads here
    campaigns soon."""
    liveness_timeout: float = 2.0
    """Deadline of one liveness ping, and of the probe of a peer whose connection broke
    (``peer_lost``).  A dead node is noticed at once (its connection is reset or refused);
    this only bounds a silent partition.  Generous on purpose: an overloaded node answers
    late, and taking a late answer for a dead leader would start an election in every group
    that node leads -- more load, more late answers (measured: 10,000 groups collapsed
    with a 0.25 s deadline)."""

    def __post_init__(self) -> None:
        if not (self.liveness_interval > 0 and self.liveness_timeout > 0):
            raise ValueError("liveness_interval and liveness_timeout must be > 0")
        try:
            uuidlib.UUID(self.server_uuid)
        except ValueError:
            raise ValueError(f"server_uuid {self.server_uuid!r} is not a uuid") from None
        if not 0 <= self.port < 65536:
            raise ValueError("port must be in [0, 65535]")
        if (self.ssl_ca or self.ssl_mutual) and not self.ssl_cert:
            raise ValueError("ssl_ca / ssl_mutual need ssl_cert and ssl_key (TLS is off)")
        self.tls  # noqa: B018 - validates the TLS fields

    @property
    def tls(self) -> TlsConfig | None:
        """The TLS settings (None: plain TCP)."""
        if not (self.ssl_cert or self.ssl_key):
            return None
        return TlsConfig(cert_file=self.ssl_cert, key_file=self.ssl_key, ca_file=self.ssl_ca,
                         mutual=self.ssl_mutual, server_name=self.ssl_server_name)

    def make_transport(self, lookup_peer: Callable[[str], str]) -> GrpcTransport:
        """The GrpcTransport this configuration describes (what a Manager builds when it is
        given no transport)."""
        from nuraft_mesg.transport.grpc import GrpcTransport

        return GrpcTransport(
            server_uuid=self.server_uuid,
            host=self.host,
            port=self.port,
            lookup_peer=lookup_peer,
            max_message_size=self.max_message_size,
            max_send_message_size=self.max_send_message_size,
            max_receive_message_size=self.max_receive_message_size,
            tls=self.tls,
            token_client=self.token_client,
            token_verifier=self.token_verifier,
            handshake_timeout=self.handshake_timeout,
            read_timeout=self.request_read_timeout,
        )


class GroupContext:
    """Per-group view for the application (nuraft_mesg's ``repl_service_ctx``).

    Made by :meth:`Manager.group`; do not construct it yourself.  (Without a manager it has
    no data service: data requests raise ServerNotFound, like nuraft_mesg's repl ctx without
    a factory.)
    """

    __slots__ = ("_group", "_manager")

    def __init__(self, group: RaftGroup, manager: Manager | None = None) -> None:
        self._group = group
        self._manager = manager

    @property
    def group_type(self) -> str:
        return self._group.group_type

    @property
    def group_id(self) -> str:
        return self._group.group_id

    @property
    def is_leader(self) -> bool:
        return self._group.is_leader

    @property
    def leader_id(self) -> str:
        """The leader's uuid, or "" when there is none."""
        return self._group.leader_id

    def raft_status(self) -> list[PeerInfo]:
        return self._group.raft_status()

    def cluster_config(self) -> list[ReplicaConfig]:
        return self._group.cluster_config()

    def statistics(self) -> GroupStatistics:
        """Counters and Raft state of this group on this node (an immutable snapshot)."""
        return self._group.statistics()

    async def wait_leader(self) -> str:
        """Wait until the group knows a leader (bound it with a cancel scope); returns the
        leader's uuid."""
        await self._group.wait_for(lambda: bool(self._group.leader_id))
        return self._group.leader_id

    # -- data service (nuraft_mesg/data_service.py has the destination rules) ----------------
    def _data_service(self) -> DataService:
        if self._manager is None:
            raise ServerNotFound("this group context has no data service")
        return self._manager.data_service

    async def data_service_request_unidirectional(
        self, dest: Destination, name: str, payload: bytes | Sequence[bytes]
    ) -> None:
        """Send ``payload`` to the handler bound as ``name`` on ``dest`` (a peer uuid, a
        server id, LEADER or ALL) and wait until it has run.  ALL ignores per-peer errors.

        Raises:
            BadRequest (LEADER from the leader, FOLLOWER/ANY, name not bound on the peer),
            ServerNotFound (unknown peer or server id, no leader, group not running), and
            the mapped error of a failed call.
        """
        await self._data_service().unidirectional(self._group, dest, name, payload)

    async def data_service_request_bidirectional(
        self, dest: Destination, name: str, payload: bytes | Sequence[bytes]
    ) -> bytes:
        """Like the unidirectional call (but ALL is BadRequest); returns the handler's
        response bytes."""
        return await self._data_service().bidirectional(self._group, dest, name, payload)


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


class Manager:
    """A node hosting many Raft groups behind one RaftStep server.  See the module doc."""

    def __init__(
        self,
        config: ManagerConfig,
        app: MessagingApplication,
        *,
        transport: Transport | None = None,
        core_factory: Callable[..., RaftNode] | None = None,
    ) -> None:
        """``core_factory`` (default :class:`RaftNode`) builds each group's sans-IO core and
        is called with RaftNode's arguments: pass a subclass, or a wrapper that seeds ``rng``
        (the test harness, :mod:`nuraft_mesg.testing`, uses it for determinism and to plug
        in deliberately broken cores)."""
        self._core_factory = core_factory
        self.config = config
        self.app = app
        self.server_uuid = config.server_uuid
        self.server_id = to_server_id(config.server_uuid)
        self.log = logging.getLogger(f"nuraft_mesg.manager.{config.server_uuid}")
        if transport is None:
            transport = config.make_transport(app.lookup_peer)
        self.transport = transport
        self.port = 0
        self._group_types: dict[str, RaftParams] = {}
        self._groups: dict[str, RaftGroup] = {}
        self._group_scopes: dict[str, trio.CancelScope] = {}
        self._state_mgrs: dict[str, StateManager] = {}
        self._group_locks: dict[str, trio.Lock] = {}
        self._groups_nursery: trio.Nursery | None = None
        self._peers: PeerSender | None = None
        self._lifetime: object = None
        self._store: SqliteStore | None = None
        self._closing = False
        self._changed = trio.Event()
        self.data_service = DataService(self, enabled=config.enable_data_service)
        self._infra: trio.Nursery | None = None
        self._timers = Timers()
        self._server_scope = trio.CancelScope()
        self._server_stopped = trio.Event()
        self._restart_lock = trio.Lock()
        # Quiet groups and node-level liveness (see _on_group_quiet, _liveness, peer_lost).
        self._quiet_count = 0
        self._quiet_followers: dict[str, set[RaftGroup]] = {}
        """Leader uuid -> the quiet groups here that follow it (and so rest on its pings)."""
        self._watched: set[str] = set()
        """Peers whose liveness task runs."""
        self._watch_more = trio.Event()
        self._probing: set[str] = set()
        """Peers being probed after a peer_lost."""

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait until any group of this node changes (leader, config, commit, apply, stop)."""
        await self._changed.wait()

    # ==========================================================================================
    # Lifecycle
    # ==========================================================================================
    async def __aenter__(self) -> Manager:
        cm = self._run()
        self._lifetime = cm
        return await cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        cm = self._lifetime
        assert cm is not None
        return await cm.__aexit__(exc_type, exc, tb)  # type: ignore[attr-defined, no-any-return]

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[Manager]:
        # The store opens before anything serves and closes after every group stopped.
        async with self._storage(), trio.open_nursery() as infra:
            self._infra = infra
            infra.start_soon(self._timers.run)  # every group's deadlines (nuraft_mesg.timers)
            self.port = await infra.start(self._serve_transport)
            self.log.info("serving RaftStep on port %d as server %d", self.port, self.server_id)
            if self.transport.supports_ping:
                infra.start_soon(self._liveness)
            try:
                async with PeerSender(
                    self.transport,
                    queue_size=self.config.peer_queue_size,
                    timeout=self.config.raft_request_timeout,
                ) as peers:
                    self._peers = peers
                    async with trio.open_nursery() as groups:
                        self._groups_nursery = groups
                        self._rejoin_stored_groups()
                        try:
                            yield self
                        finally:
                            self._closing = True
                            groups.cancel_scope.cancel()
            finally:
                self._groups_nursery = None
                self._infra = None
                self._groups.clear()
                self._notify_changed()
                infra.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await self.transport.aclose()

    async def _serve_transport(self, *, task_status: trio.TaskStatus[int]) -> None:
        """The transport's server, in a scope of its own so that restart_server can stop it."""
        scope = self._server_scope = trio.CancelScope()
        stopped = self._server_stopped = trio.Event()
        try:
            with scope:
                await self.transport.serve(self, task_status=task_status)
        finally:
            stopped.set()

    async def restart_server(self) -> bool:
        """Stop the server and serve again on the same port (nuraft_mesg's restart_server).
        Groups keep running; peers reconnect; data-service bindings stay.  If the server
        cannot be rebuilt (port taken) this is logged and False returned, with the node not
        serving (nuraft_mesg PR #56: no crash)."""
        async with self._restart_lock:
            infra = self._infra
            if infra is None or self._closing:
                raise Cancelled("manager is not running")
            self._server_scope.cancel()
            await self._server_stopped.wait()
            try:
                self.port = await infra.start(self._serve_transport)
            except OSError as exc:
                self.log.error("restart_server: cannot serve on port %d: %s", self.port, exc)
                return False
            self.log.info("server restarted on port %d", self.port)
            return True

    @asynccontextmanager
    async def _storage(self) -> AsyncIterator[None]:
        """The durable default store's lifetime (nothing without ``data_dir``)."""
        if self.config.data_dir is None:
            yield
            return
        async with SqliteStore.open(
            self.config.data_dir, owner=self.server_uuid, logger=self.log
        ) as store:
            self.log.info("durable store %s holds %d group(s)", store.path, len(store.groups()))
            self._store = store
            try:
                yield
            finally:
                self._store = None

    @property
    def store(self) -> SqliteStore | None:
        """The durable default store while the manager runs with ``data_dir``, else None."""
        return self._store

    def _rejoin_stored_groups(self, group_type: str | None = None) -> None:
        """Restart every stored group (of ``group_type``) whose type is registered."""
        store, nursery = self._store, self._groups_nursery
        if store is None or nursery is None or self._closing:
            return
        for rec in store.groups():
            if group_type is not None and rec.group_type != group_type:
                continue
            if rec.group_type in self._group_types and rec.group_id not in self._groups:
                nursery.start_soon(self._rejoin, rec.group_id, rec.group_type)

    async def _rejoin(self, group_id: str, group_type: str) -> None:
        try:
            await self._ensure_group(group_id, group_type, None)
        except RaftError as exc:
            self.log.error("cannot rejoin stored group %s: %s", group_id, exc)
        else:
            self.log.info("rejoined stored group %s (type %r)", group_id, group_type)

    # ==========================================================================================
    # Group types and groups
    # ==========================================================================================
    def register_group_type(self, group_type: str, params: RaftParams) -> None:
        """Map a group type to the parameters of every group of that type."""
        if group_type in self._group_types:
            raise ValueError(f"group type {group_type!r} is already registered")
        self._group_types[group_type] = params
        self._rejoin_stored_groups(group_type)

    def _params_for(self, group_type: str) -> RaftParams:
        params = self._group_types.get(group_type or self.config.default_group_type)
        if params is None:
            raise ServerNotFound(f"unknown group type {group_type!r}")
        return params

    def _get(self, group_id: str) -> RaftGroup:
        group = self._groups.get(group_id)
        if group is None or group.stopped:
            raise ServerNotFound(f"unknown group {group_id}")
        return group

    def group(self, group_id: str) -> GroupContext:
        """The group's context (nuraft_mesg's repl_service_ctx).

        Raises:
            ServerNotFound: this node does not host the group.
        """
        return GroupContext(self._get(group_id), self)

    @property
    def group_ids(self) -> list[str]:
        return [g for g, grp in self._groups.items() if not grp.stopped]

    def lookup_state_manager(self, group_id: str) -> StateManager | None:
        return self._state_mgrs.get(group_id)

    async def _start_group(self, group_id: str, group_type: str, smgr: StateManager,
                           bootstrap: ClusterConfig | None = None) -> RaftGroup:
        if self._groups_nursery is None or self._peers is None or self._closing:
            raise Cancelled("manager is not running")
        try:
            uuidlib.UUID(group_id)
        except ValueError:
            raise BadRequest(f"group id {group_id!r} is not a uuid") from None
        params = self._params_for(group_type)
        if self._store is not None:
            smgr = self._store.wrap(smgr, group_id, group_type or self.config.default_group_type)
        smgr.become_ready()
        if bootstrap is not None and smgr.read_state() is None \
                and smgr.load_log_store().next_slot() == 1:
            # A fresh group that starts with all its members: persisted before the group
            # runs, so a restart comes back with the same first configuration.
            await smgr.save_config(bootstrap)
        group = RaftGroup(
            group_id=group_id,
            group_type=group_type or self.config.default_group_type,
            params=params,
            state_mgr=smgr,
            server_uuid=self.server_uuid,
            server_id=self.server_id,
            peers=self._peers,
            logger=self.log,
            on_change=self._notify_changed,
            core_factory=self._core_factory,
            apply_timeout=self.config.client_request_timeout,
            quiesce=self.transport.supports_ping,
            on_quiet=self._on_group_quiet,
            timers=self._timers,
        )
        scope = trio.CancelScope()

        async def run_group(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await group.run(task_status=task_status)
            if self._groups.get(group_id) is group:
                del self._groups[group_id]
                self._group_scopes.pop(group_id, None)

        self._groups[group_id] = group
        self._group_scopes[group_id] = scope
        self._state_mgrs[group_id] = smgr
        await self._groups_nursery.start(run_group)
        return group

    async def _ensure_group(
        self, group_id: str, group_type: str, smgr: StateManager | None,
        bootstrap: ClusterConfig | None = None,
    ) -> RaftGroup:
        lock = self._group_locks.setdefault(group_id, trio.Lock())
        async with lock:
            group = self._groups.get(group_id)
            if group is not None and not group.stopped:
                return group
            if smgr is None:
                smgr = self._state_mgrs.get(group_id) or self.app.create_state_mgr(
                    self.server_id, group_id
                )
            return await self._start_group(group_id, group_type, smgr, bootstrap)

    async def create_group(self, group_id: str, group_type: str, *,
                           members: Sequence[str] = ()) -> None:
        """Create a group led by this node and wait until this node leads it.

        The state manager comes from ``app.create_state_mgr``; its initial configuration
        should list only this node, which then elects itself (others join through
        :meth:`add_member`).

        ``members`` (an extension of nuraft_mesg's API): the uuids of *all* the group's
        members, this node included, the first being the one that campaigns at once.  Every
        member calls ``create_group`` with the same list (as etcd's initial cluster), and the
        group starts with all of them in its first configuration: one election instead of
        two joins and two configuration changes.  The first member's call waits until the
        group has a leader (normally itself); the others return once the group runs here.
        A group this node already holds (or has stored) keeps its own configuration.

        Raises:
            ServerNotFound: unknown group type.  Cancelled: not leader (with ``members``: no
            leader) within ``leader_change_timeout`` (nuraft_mesg's CANCELLED).
            BadRequest: ``members`` does not name this node, or names one twice.
        """
        if members:
            await self._create_with_members(group_id, group_type, list(members))
            return
        group = await self._ensure_group(group_id, group_type, None)
        if not group.is_leader:
            await group.run_command(lambda core: core.election_timeout())
        if not await self._wait(group, lambda: group.is_leader):
            raise Cancelled(f"this node did not become leader of {group_id}")

    async def _create_with_members(self, group_id: str, group_type: str,
                                   members: list[str]) -> None:
        try:
            uuids = [str(uuidlib.UUID(m)) for m in members]
        except ValueError:
            raise BadRequest(f"members must be uuids: {members!r}") from None
        if len(set(uuids)) != len(uuids) or self.server_uuid not in uuids:
            raise BadRequest(f"members must name this node ({self.server_uuid}) and no "
                             f"node twice: {members!r}")
        bootstrap = ClusterConfig(servers=tuple(ServerConfig(id=to_server_id(u), endpoint=u)
                                                for u in uuids))
        group = await self._ensure_group(group_id, group_type, None, bootstrap)
        if uuids[0] != self.server_uuid:
            # The first member campaigns; give it a head start of a few election timeouts.
            group.hold_election(5 * group.params.election_timeout_ms[1] / 1000)
            return
        if group.leader_id == "":
            await group.run_command(lambda core: core.election_timeout())
        if not await self._wait(group, lambda: group.leader_id != ""):
            raise Cancelled(f"group {group_id} has no leader")

    async def join_group(self, group_id: str, group_type: str, state_mgr: StateManager) -> None:
        """Start hosting a group from the caller's state manager (the restart path).  An
        already hosted group is left as it is, like nuraft_mesg."""
        self._state_mgrs.setdefault(group_id, state_mgr)
        await self._ensure_group(group_id, group_type, self._state_mgrs[group_id])

    async def leave_group(self, group_id: str) -> None:
        """Stop the group and delete its persisted state (``permanent_destroy``).  A group this
        node does not host is a no-op."""
        group = self._groups.get(group_id)
        if group is None:
            if self._store is not None and group_id in self._store:
                await self._forget_stored(group_id)  # stored, not running: stopped by an error
                return
            self.log.debug("leave_group(%s): not hosted", group_id)
            return
        scope = self._group_scopes.get(group_id)
        group.resign()
        if scope is not None:
            scope.cancel()
        with trio.CancelScope(shield=True):
            await group.wait_stopped()
        self._groups.pop(group_id, None)
        self._group_scopes.pop(group_id, None)
        smgr = self._state_mgrs.pop(group_id, None)
        if smgr is not None:
            smgr.permanent_destroy()
        if self._store is not None:
            await self._forget_stored(group_id)

    async def _forget_stored(self, group_id: str) -> None:
        """Delete the group from the durable store and wait until that is on disk."""
        assert self._store is not None
        smgr = self._state_mgrs.pop(group_id, None)
        if smgr is not None:
            smgr.permanent_destroy()
        self._store.destroy(group_id)
        await self._store.barrier()

    async def _wait(self, group: RaftGroup, predicate: Callable[[], bool]) -> bool:
        """Wait up to ``leader_change_timeout`` for ``predicate``; False if it never held."""
        with trio.move_on_after(self.config.leader_change_timeout):
            await group.wait_for(predicate)
            return True
        return False

    @staticmethod
    def _config_settled(group: RaftGroup) -> bool:
        """No membership change in flight (so a new one will not get CONFIG_CHANGING)."""
        core = group.core
        return not core.is_leader or (not core.config_changing and core.joining_server is None)

    # ==========================================================================================
    # Membership and leadership
    # ==========================================================================================
    async def add_member(
        self,
        group_id: str,
        peer: str | ServerConfig,
        *,
        priority: int = 1,
        learner: bool = False,
    ) -> None:
        """Add a peer (by uuid, or a full ServerConfig) and wait until a committed
        configuration holds it.  A membership change still in flight is waited out first
        (up to ``leader_change_timeout``), so consecutive calls do not collide.

        Raises:
            ServerNotFound (unknown group), NotLeader, ConfigChanging, ServerIsJoining,
            ServerAlreadyExists, Cancelled (not in the config within the timeout).
        """
        group = self._get(group_id)
        if isinstance(peer, str):
            try:
                srv = ServerConfig(to_server_id(peer), peer, priority=priority, learner=learner)
            except ValueError:
                raise BadRequest(f"peer {peer!r} is not a uuid") from None
        else:
            srv = peer
        group.learn_endpoint(srv.id, srv.endpoint)
        await self._wait(group, lambda: self._config_settled(group))
        await group.run_command(lambda core: core.add_server(srv))
        if not await self._wait(group, lambda: srv.id in group.core.committed_config):
            raise Cancelled(f"{srv.endpoint} did not join {group_id} in time")

    async def rem_member(self, group_id: str, peer: str) -> None:
        """Remove a peer from the group (does not wait for the change to commit)."""
        group = self._get(group_id)
        try:
            sid = to_server_id(peer)
        except ValueError:
            raise BadRequest(f"peer {peer!r} is not a uuid") from None
        await self._wait(group, lambda: self._config_settled(group))
        await group.run_command(lambda core: core.remove_server(sid))

    async def become_leader(self, group_id: str) -> None:
        """Ask the current leader to hand leadership to this node and wait for it.

        Raises:
            Cancelled: unknown group, or the request was refused.  RaftTimeout: not leader
            within ``leader_change_timeout``.
        """
        group = self._groups.get(group_id)
        if group is None or group.stopped:
            raise Cancelled(f"unknown group {group_id}")
        if group.is_leader:
            return
        # A node that just (re)started may not have heard from the leader yet.
        await self._wait(group, lambda: group.core.leader_id != NO_LEADER)
        await group.run_command(lambda core: core.request_leadership())
        if not await self._wait(group, lambda: group.is_leader):
            raise RaftTimeout(f"did not become leader of {group_id} in time")

    async def yield_leadership(self, group_id: str, target: str | None = None) -> None:
        """On the leader: hand leadership to ``target`` (a uuid) or the best member."""
        group = self._get(group_id)
        tid = to_server_id(target) if target else None
        await group.run_command(lambda core: core.yield_leadership(tid))

    def get_srv_config_all(self, group_id: str) -> list[ServerConfig]:
        """Every server of the group's current configuration ([] for an unknown group)."""
        group = self._groups.get(group_id)
        if group is None:
            self.log.warning("get_srv_config_all: unknown group %s", group_id)
            return []
        return list(group.core.config.servers)

    def append_peers(self, group_id: str) -> list[str]:
        """Peer uuids from the group's *persisted* configuration."""
        smgr = self._state_mgrs.get(group_id)
        if smgr is None:
            return []
        return [s.endpoint for s in smgr.load_config().servers]

    def logstore_id(self, group_id: str) -> int:
        smgr = self._state_mgrs.get(group_id)
        return smgr.get_logstore_id() if smgr is not None else 0xFFFFFFFF

    # ==========================================================================================
    # Writes
    # ==========================================================================================
    async def append_entries(self, group_id: str, entries: Sequence[bytes]) -> list[bytes]:
        """Replicate ``entries``; return the state machine's results once they are committed
        and applied on this node.

        On a follower the entries are forwarded to the leader when the group type has
        ``auto_forwarding``; otherwise :class:`NotLeader` names the leader.

        Raises:
            ServerNotFound, NotLeader, RaftTimeout (not applied within
            ``client_request_timeout``; the entries may still commit), TermMismatch (another
            leader replaced them: they will never commit).
        """
        group = self._get(group_id)
        data = [bytes(e) for e in entries]
        proposal = await group.propose(data)
        try:
            return await proposal.applied.wait()  # RaftTimeout after client_request_timeout
        except NotLeader as exc:
            if not group.params.auto_forwarding or exc.leader_id == NO_LEADER:
                raise
            leader = exc.leader_id
        with trio.move_on_after(self.config.client_request_timeout):
            return await self._forward(group, leader, data)
        raise RaftTimeout("forwarded entries not applied in time")

    def session(self, *, retry_timeout: float = 30.0) -> ClientSession:
        """An exactly-once client session writing through this node's ``append_entries``:
        ``async with mgr.session() as s: await s.append_entry(gid, data)``; every write is
        retried with its sequence number until answered (the groups' state machines must be
        wrapped in :class:`~nuraft_mesg.sessions.SessionStateMachine`; see docs/sessions.md).
        """
        return ClientSession(self.append_entries, retry_timeout=retry_timeout)

    async def _forward(self, group: RaftGroup, leader: int, data: list[bytes]) -> list[bytes]:
        """Send a client_request to the leader, which answers once the entries are committed
        and applied there, with their results; return those once the entries are applied
        here too (a write forwarded through this node is visible in its state machine).

        A refusal naming another leader is followed (nothing was appended: resending is
        safe) up to :data:`_MAX_FORWARD_HOPS` times; any other refusal, or an answer without
        one result per entry, raises its typed error."""
        for _ in range(_MAX_FORWARD_HOPS):
            leader_uuid = group.endpoint_of(leader)
            if not leader_uuid or leader == self.server_id:
                raise NotLeader(NO_LEADER, "no leader to forward to")
            msg = Message(MsgType.CLIENT_REQUEST, 0, self.server_id, leader,
                          entries=tuple(LogEntry(0, LogType.APP, d) for d in data))
            env = GroupEnvelope(group.group_id, group.group_type, leader_uuid, msg)
            try:
                reply = await self.transport.call(
                    leader_uuid, env, timeout=self.config.client_request_timeout
                )
            except TransportError as exc:
                raise RaftError.for_code(exc.code,
                                         f"forwarding to the leader failed: {exc}") from None
            resp = reply.message
            if resp.accepted:
                break
            if resp.result_code == ResultCode.NOT_LEADER and resp.dest not in (
                    NO_LEADER, leader, self.server_id):
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

    # ==========================================================================================
    # Data service and status (nuraft_mesg/data_service.py, nuraft_mesg/admin.py)
    # ==========================================================================================
    def bind_data_service_request(
        self, name: str, group_id: str, handler: DataServiceHandler | None
    ) -> bool:
        """Serve data-service requests named ``name`` for ``group_id`` with ``handler``
        (``async (request: bytes) -> bytes``).  False if the data service is off, the handler
        is None or ``(name, group_id)`` is already bound.  Bindings survive
        :meth:`restart_server`; the group need not be hosted (yet)."""
        return self.data_service.bind(name, group_id, handler)

    async def data_request(self, request: DataRequest) -> bytes:
        """The transport's data-service entry point (a DataHandler)."""
        return await self.data_service.serve(request)

    def node_status(self, group_ids: Sequence[str] = ()) -> NodeStatus:
        """This node's groups as ``Admin/Status`` reports them (every group when empty)."""
        from nuraft_mesg.admin import collect_status

        return collect_status(self, group_ids)

    # ==========================================================================================
    # The RaftStep server side
    # ==========================================================================================
    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        """Route one incoming RaftStep to its group (nuraft_mesg's proto_service)."""
        msg = request.message
        if not msg.type.is_request:
            raise StepError(Status.INVALID_ARGUMENT, f"{msg.type.name} is not a request")
        group = self._groups.get(request.group_id)
        if group is None or group.stopped:
            if msg.type != MsgType.JOIN_CLUSTER_REQUEST or self._closing:
                raise StepError(Status.NOT_FOUND, f"Missing RAFT group {request.group_id}")
            why_not = self._invalid_invitation(msg)
            if why_not:  # create no group for a join that its core would refuse anyway
                raise StepError(Status.NOT_FOUND,
                                f"Missing RAFT group {request.group_id} ({why_not})")
            try:
                group = await self._ensure_group(request.group_id, request.group_type, None)
            except RaftError as exc:
                raise StepError(Status.NOT_FOUND, f"cannot create group: {exc}") from None
        if msg.type == MsgType.ADD_SERVER_REQUEST:
            refusal = self._learn_joiner(group, msg)
            if refusal is not None:
                return self._envelope(group, refusal)
        started = trio.current_time()
        applied = None
        try:
            if msg.type == MsgType.CLIENT_REQUEST:
                reply, applied = await group.handle_client_request(msg)
            else:
                reply = await group.handle_request(msg, quiesce=request.quiesce)
        except RaftError as exc:
            raise self._step_refused(exc) from None
        if msg.type != MsgType.CLIENT_REQUEST or not reply.accepted:
            return self._step_answer(group, msg, started, reply)
        # Answer forwarded and external writes once they are committed and applied here,
        # so "accepted" means durable on a quorum (NuRaft's blocking return mode).
        last = reply.next_index - 1
        prop = Proposal(reply.term, last - len(msg.entries) + 1, last)
        slot = applied if applied is not None else group.watch_apply(prop)
        with trio.move_on_after(self.config.client_request_timeout):
            try:
                results = await slot.wait()
            except RaftError as exc:
                reply = Message(reply.type, reply.term, reply.src, reply.dest,
                                result_code=exc.code)
            else:
                reply = Message(reply.type, reply.term, reply.src, reply.dest,
                                next_index=reply.next_index, accepted=True,
                                context=results[-1] if results else b"",
                                results=tuple(results))
            return self._envelope(group, reply)
        reply = Message(reply.type, reply.term, reply.src, reply.dest,
                        result_code=ResultCode.TIMEOUT)
        return self._envelope(group, reply)

    def step_nowait(self, request: GroupEnvelope, respond: StepReply) -> bool:
        """The transport's fast path (a FastStepHandler): hand ``request`` to its group's
        inbox without a task of its own and answer through ``respond`` -- the same envelope
        :meth:`raft_step` would return, or its StepError.  A full inbox is answered
        UNAVAILABLE at once (Raft retries).  False (nothing done) for what needs the general
        path: client and add_server requests, requests to groups not running here (a join
        may create one), non-requests."""
        msg = request.message
        if not msg.type.is_request or msg.type in _GENERAL_PATH:
            return False
        group = self._groups.get(request.group_id)
        if group is None or group.stopped:
            return False
        started = trio.current_time()

        def on_reply(result: Message | RaftError) -> None:
            answer: GroupEnvelope | StepError = (
                self._step_refused(result) if isinstance(result, RaftError)
                else self._step_answer(group, msg, started, result))
            try:
                respond(answer)
            except Exception:
                self.log.exception("a fast-path reply callback failed")

        try:
            group.handle_request_nowait(msg, on_reply, quiesce=request.quiesce)
        except trio.WouldBlock:
            respond(StepError(Status.UNAVAILABLE, f"group {request.group_id} is busy"))
        except RaftError as exc:
            respond(self._step_refused(exc))
        return True

    @staticmethod
    def _step_refused(exc: RaftError) -> StepError:
        """How a RaftStep that its group refused (stopped, failed) is answered."""
        return StepError(Status.CANCELLED, f"Server rejected request: {exc}")

    def _step_answer(
        self, group: RaftGroup, msg: Message, started: float, reply: Message
    ) -> GroupEnvelope:
        """The envelope answering ``msg`` (received at ``started``) with ``reply``."""
        if msg.type == MsgType.APPEND_ENTRIES_REQUEST:
            group.record_append_latency(trio.current_time() - started)
        return self._envelope(group, reply)

    # ==========================================================================================
    # Quiet groups and node-level liveness
    # ==========================================================================================
    @property
    def quiet_groups(self) -> int:
        """Groups quiet on this node now (leaders and followers)."""
        return self._quiet_count

    def peer_statistics(self) -> SenderStatistics:
        """Outbound traffic per peer (requests answered, failed, dropped, batches)."""
        if self._peers is None:
            return SenderStatistics(MappingProxyType({}))
        return self._peers.statistics()

    def _on_group_quiet(self, group: RaftGroup, leader: str, quiet: bool) -> None:
        """A group went quiet or woke; a quiet follower (``leader`` set) rests on pings to
        its leader's node."""
        self._quiet_count += 1 if quiet else -1
        if not leader:
            return
        if quiet:
            self._quiet_followers.setdefault(leader, set()).add(group)
            if leader not in self._watched:
                self._watch_more.set()
        else:
            followers = self._quiet_followers.get(leader)
            if followers is not None:
                followers.discard(group)
                if not followers:
                    del self._quiet_followers[leader]

    async def _liveness(self) -> None:
        """Start a watcher for every peer that leads a quiet group here (each stops when
        no quiet group here rests on it any more)."""
        async with trio.open_nursery() as nursery:
            while True:
                await self._watch_more.wait()
                self._watch_more = trio.Event()
                for peer in list(self._quiet_followers):
                    if peer not in self._watched:
                        self._watched.add(peer)
                        nursery.start_soon(self._watch_peer, peer)

    async def _watch_peer(self, peer: str) -> None:
        """Ping ``peer`` every ``liveness_interval`` while quiet groups here follow it; a
        ping unanswered within ``liveness_timeout`` makes its groups here campaign soon
        (which wakes them, so the watch ends)."""
        interval = self.config.liveness_interval
        try:
            while self._quiet_followers.get(peer):
                start = trio.current_time()
                if not await self._ping(peer):
                    self._leader_lost(peer, "ping failed")
                await trio.sleep_until(start + interval)
        finally:
            self._watched.discard(peer)

    async def _ping(self, peer: str) -> bool:
        try:
            await self.transport.ping(peer, timeout=self.config.liveness_timeout)
        except TransportError as exc:
            self.log.debug("ping %s failed: %s", peer, exc)
            return False
        except Exception:  # a transport bug: count it as a failed ping
            self.log.exception("ping %s raised an unexpected error", peer)
            return False
        return True

    def peer_lost(self, peer: str) -> None:
        """The transport saw the connection to or from ``peer`` end abruptly (a
        PeerWatcher).  Probe it once (at most one probe per peer at a time); if the probe
        fails, every group here that follows it campaigns soon."""
        infra = self._infra
        if (infra is None or self._closing or not self.transport.supports_ping
                or peer == self.server_uuid or peer in self._probing):
            return
        self._probing.add(peer)
        infra.start_soon(self._probe_lost, peer)

    async def _probe_lost(self, peer: str) -> None:
        try:
            if not await self._ping(peer):
                self._leader_lost(peer, "connection lost, ping failed")
        finally:
            self._probing.discard(peer)

    def _leader_lost(self, peer: str, why: str) -> None:
        """``peer`` looks dead: every group here that it leads (and we follow) campaigns
        within half its lower election timeout (quiet ones wake)."""
        count = sum(1 for g in list(self._groups.values()) if g.leader_lost(peer))
        if count:
            self.log.info("peer %s looks dead (%s): %d group(s) it led here campaign soon",
                          peer, why, count)

    def _invalid_invitation(self, msg: Message) -> str:
        """Why a join for a group not hosted here cannot be an invitation ("" if it can be):
        it must be addressed to this server and carry the leader's configuration."""
        if msg.dest != self.server_id:
            return f"join addressed to server {msg.dest}, not {self.server_id}"
        if not msg.entries or msg.entries[0].type != LogType.CONFIG:
            return "join without a configuration"
        try:
            ClusterConfig.decode(msg.entries[0].buffer)
        except RaftError as exc:
            return f"join with a bad configuration: {exc}"
        return ""

    def _learn_joiner(self, group: RaftGroup, msg: Message) -> Message | None:
        """An add_server request (from an external client): record the new server's uuid so
        that the leader can invite it.  A server id that is not its uuid's is refused."""
        if len(msg.entries) != 1 or msg.entries[0].type != LogType.CLUSTER:
            return None  # the core refuses it
        try:
            srv = ServerConfig.decode(msg.entries[0].buffer)
        except BadRequest:
            return None  # the core refuses it
        try:
            valid = to_server_id(srv.endpoint) == srv.id
        except ValueError:
            valid = False
        if not valid:
            return Message(msg.type.response_type, group.core.term, self.server_id, msg.src,
                           result_code=ResultCode.BAD_REQUEST)
        group.learn_endpoint(srv.id, srv.endpoint)
        return None

    def _envelope(self, group: RaftGroup, reply: Message) -> GroupEnvelope:
        dest_addr = ""
        if not reply.accepted and reply.dest != NO_LEADER:
            dest_addr = group.endpoint_of(reply.dest)
        return GroupEnvelope(group.group_id, "", "", reply, dest_addr=dest_addr)
