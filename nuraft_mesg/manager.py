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

Around this module: :mod:`nuraft_mesg.manager_config` (ManagerConfig, the application
protocol, :func:`to_server_id`), :mod:`nuraft_mesg.group_context` (the application's view of
a group), :mod:`nuraft_mesg.routing` (incoming RaftSteps to their group, a mixin of the Manager),
:mod:`nuraft_mesg.forwarding` (a follower's write sent to the leader) and
:mod:`nuraft_mesg.liveness` (pings standing in for quiet groups' heartbeats).
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType, TracebackType

import trio

from nuraft_mesg.admin import collect_status
from nuraft_mesg.admission import Admission
from nuraft_mesg.data_service import DataService, DataServiceHandler
from nuraft_mesg.errors import (
    BadRequest,
    Busy,
    Cancelled,
    NotLeader,
    RaftError,
    RaftTimeout,
    ServerNotFound,
)
from nuraft_mesg.forwarding import client_results as client_results
from nuraft_mesg.forwarding import forward_to_leader
from nuraft_mesg.group import RaftGroup
from nuraft_mesg.group_context import GroupContext as GroupContext
from nuraft_mesg.liveness import Liveness
from nuraft_mesg.manager_config import ManagerConfig as ManagerConfig
from nuraft_mesg.manager_config import MessagingApplication as MessagingApplication
from nuraft_mesg.manager_config import to_server_id as to_server_id
from nuraft_mesg.oneshot import Slot
from nuraft_mesg.pipeline import OnDone, WritePipeline
from nuraft_mesg.raft.node import NO_LEADER, RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import (
    ClusterConfig,
    ServerConfig,
)
from nuraft_mesg.routing import StepRouting
from nuraft_mesg.sessions import ClientSession
from nuraft_mesg.storage.interfaces import StateManager
from nuraft_mesg.storage.sqlite import SqliteStore
from nuraft_mesg.timers import Timers
from nuraft_mesg.transport.base import (
    DataRequest,
    Transport,
)
from nuraft_mesg.transport.peers import PeerSender, SenderStatistics
from nuraft_mesg.transport.status import NodeStatus

__all__ = [
    "GroupContext",
    "Manager",
    "ManagerConfig",
    "MessagingApplication",
    "to_server_id",
]




class Manager(StepRouting):
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
        self.admission = Admission(config.max_pending_proposals)
        """Writes waiting for their commit here, and the bounds (nuraft_mesg.admission)."""
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
        # Quiet groups and node-level liveness (nuraft_mesg.liveness; see peer_lost).
        self._liveness = Liveness(config=config, transport=transport, groups=self._groups,
                                  log=self.log)

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
                infra.start_soon(self._liveness.run)
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
            on_quiet=self._liveness.on_group_quiet,
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
            leader replaced them: they will never commit), Busy (the group or this node has
            as many writes waiting as it allows: nothing was appended).
        """
        group = self._get(group_id)
        self.admission.enter(group_id, group.params.max_pending_proposals)
        try:
            return await self._append_admitted(group, [bytes(e) for e in entries])
        finally:
            self.admission.leave(group_id)

    async def _append_admitted(self, group: RaftGroup, data: list[bytes]) -> list[bytes]:
        proposal = await group.propose(data)
        applied = proposal.applied
        assert isinstance(applied, Slot)  # propose() awaits; only submit() uses a Callback
        try:
            return await applied.wait()  # RaftTimeout after client_request_timeout
        except NotLeader as exc:
            if not group.params.auto_forwarding or exc.leader_id == NO_LEADER:
                raise
            leader = exc.leader_id
        with trio.move_on_after(self.config.client_request_timeout):
            return await forward_to_leader(self.transport, self.server_id, group, leader,
                                           data, request_timeout=self.config.client_request_timeout)
        raise RaftTimeout("forwarded entries not applied in time")

    def submit(self, group_id: str, entries: Sequence[bytes], on_done: OnDone) -> None:
        """Start a write without waiting for it: ``on_done`` is called exactly once, from the
        group's task, with the entries' results or a RaftError (NotLeader on a follower --
        this path never forwards --, RaftTimeout after ``client_request_timeout``,
        TermMismatch, Cancelled/Failed when the group stops).  ``on_done`` must not block;
        an exception from it is logged and never stops the group.

        Raises (synchronously; then nothing was appended and ``on_done`` is never called):
            ServerNotFound; Busy (the admission bound is reached, or the group's inbox is
            full); Cancelled/Failed (the group is stopped).
        """
        group = self._get(group_id)
        admission = self.admission
        admission.enter(group_id, group.params.max_pending_proposals)
        log = group.log

        def done(result: list[bytes] | RaftError) -> None:
            admission.leave(group_id)
            try:
                on_done(result)
            except Exception:
                log.exception("on_done of a submitted write raised")

        try:
            group.propose_nowait([bytes(e) for e in entries], done)
        except trio.WouldBlock:
            admission.leave(group_id)
            raise Busy(f"group {group_id}'s inbox is full") from None
        except BaseException:
            admission.leave(group_id)
            raise

    @asynccontextmanager
    async def pipeline(self, group_id: str, window: int = 1024) -> AsyncIterator[WritePipeline]:
        """A :class:`~nuraft_mesg.pipeline.WritePipeline`: one task keeps up to ``window``
        writes to ``group_id`` in flight (see :meth:`submit`); leaving the block drains it."""
        self._get(group_id)
        pipe = WritePipeline(self, group_id, window)
        yield pipe
        await pipe.drain()

    # ==========================================================================================
    # Reads (nuraft_mesg/reads.py, docs/reads.md)
    # ==========================================================================================
    async def read(self, group_id: str, query: bytes, *, mode: str = "linearizable",
                   timeout: float | None = None,  # noqa: ASYNC109 - one deadline per read
                   ) -> bytes:
        """The group's state machine's answer to ``query`` (``StateMachine.query``) from
        this node, once its state is recent enough for ``mode``:

        * ``"linearizable"``: reflects every write that completed before the call (read
          index: one heartbeat round to a quorum, shared by concurrent reads; followers ask
          the leader for the index and answer from their own state);
        * ``"lease"``: the same without the round while the leader's lease holds (needs
          ``RaftParams.lease_reads``; assumes bounded clock drift); else linearizable;
        * ``"stale"``: this node's state as it is.

        Raises:
            ServerNotFound (group not hosted here), BadRequest (unknown mode, lease reads
            off, a query the state machine refuses: QueryNotSupported), NotLeader (no
            leader known, or the leadership changed meanwhile), Cancelled (removed from the
            group), RaftTimeout (no answer within ``timeout``, default
            ``client_request_timeout``: e.g. this node is cut off from the quorum).
        """
        group = self._get(group_id)
        limit = self.config.client_request_timeout if timeout is None else timeout
        return await group.read(query, mode=mode, timeout=limit)

    @property
    def read_timeout(self) -> float:
        """The default deadline of :meth:`read` (``client_request_timeout``)."""
        return self.config.client_request_timeout

    def session(self, *, retry_timeout: float = 30.0) -> ClientSession:
        """An exactly-once client session writing through this node's ``append_entries``:
        ``async with mgr.session() as s: await s.append_entry(gid, data)``; every write is
        retried with its sequence number until answered (the groups' state machines must be
        wrapped in :class:`~nuraft_mesg.sessions.SessionStateMachine`; see docs/sessions.md).
        """
        return ClientSession(self.append_entries, retry_timeout=retry_timeout)

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
        return collect_status(self, group_ids)

    # ==========================================================================================
    # Quiet groups and node-level liveness
    # ==========================================================================================
    @property
    def quiet_groups(self) -> int:
        """Groups quiet on this node now (leaders and followers)."""
        return self._liveness.quiet_groups

    def peer_statistics(self) -> SenderStatistics:
        """Outbound traffic per peer (requests answered, failed, dropped, batches)."""
        if self._peers is None:
            return SenderStatistics(MappingProxyType({}))
        return self._peers.statistics()

    def peer_lost(self, peer: str) -> None:
        """The transport saw the connection to or from ``peer`` end abruptly (a
        PeerWatcher).  Probe it once (at most one probe per peer at a time); if the probe
        fails, every group here that follows it campaigns soon."""
        infra = self._infra
        if infra is None or self._closing:
            return
        self._liveness.peer_lost(peer, infra)
