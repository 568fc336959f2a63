"""SimCluster: N real :class:`~nuraft_mesg.manager.Manager` nodes on one simulated network.

Each node is a Manager with a :class:`~.sim.SimTransport` and its own simulated disk per group
(:class:`~.sim_node.SimDisk`: hard state, configuration and log, exactly what the node persisted).
Everything runs in one trio run, normally under ``trio.testing.MockClock(autojump_threshold=0)``
so that simulated time jumps from one timer to the next::

    async with SimCluster.open(3, seed=1) as cluster:      # pytest-trio: use autojump_clock
        gid = await cluster.create_group()                  # n1 leads; n2 and n3 join
        w = await cluster.write_and_wait(gid, b"set x 1")
        cluster.partition(["n1"], ["n2", "n3"])
        await cluster.run_for(5)                            # 5 simulated seconds
        await cluster.crash("n2"); await cluster.restart("n2")
        cluster.heal()
        await cluster.check_liveness()
        check_invariants(cluster)                           # raises InvariantViolation

Crash and restart: :meth:`SimCluster.crash` cancels the node's Manager, losing everything it
had not persisted (its groups' in-flight Ready, its state machines, its client calls);
:meth:`SimCluster.restart` starts a new Manager with the same uuid, gives each group a new
state manager over the same disk and a *fresh* state machine (so it re-applies from index 1),
and rejoins the groups it held with ``join_group``.

Observation (what :mod:`.checkers` needs) goes through public hooks where it can:

* each state machine is wrapped in a :class:`~.sim_node.RecordingStateMachine` that reports
  every apply;
* each state manager reports its Raft events (leaders, configurations) and saved hard state;
* the Manager's ``core_factory`` builds every core with a seeded ``rng`` (determinism) and
  instruments it: after each Ready cycle (``advance``) the checker observes the core's term,
  role, log and commit index, and each message it steps is matched with the group it was
  sent to.

Client writes (:meth:`SimCluster.write`) go through ``Manager.append_entries`` and are
recorded in :attr:`SimCluster.writes`; an acknowledged write is checked for ever after.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from nuraft_mesg.errors import RaftError, ServerNotFound
from nuraft_mesg.group import RaftGroup
from nuraft_mesg.manager import Manager, ManagerConfig, to_server_id
from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import (
    BecomeLeader,
    Event,
    JoinedCluster,
    NewConfig,
    Ready,
    RemovedFromCluster,
)
from nuraft_mesg.raft.types import (
    LogEntry,
    Message,
)
from nuraft_mesg.storage.interfaces import StateMachine, StateManager
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing.checkers import ClusterChecker, LivenessViolation, check_invariants
from nuraft_mesg.testing.sim import LinkState, SimNetwork, SimTransport
from nuraft_mesg.testing.sim_node import (
    Operation,
    RecordingStateMachine,
    SimDisk,
    SimLogStore,
    SimNode,
    SimStateManager,
    Write,
)
from nuraft_mesg.transport.base import Transport
from nuraft_mesg.transport.codec import GroupEnvelope

__all__ = [
    "GROUP_TYPE",
    "SIM_PARAMS",
    "Operation",
    "RecordingStateMachine",
    "SimCluster",
    "SimDisk",
    "SimNode",
    "SimStateManager",
    "Workload",
    "Write",
]

log = logging.getLogger(__name__)

GROUP_TYPE = "sim"
SIM_PARAMS = RaftParams(heartbeat_interval_ms=100, election_timeout_ms=(400, 800))
"""Default group parameters in the simulation (times are simulated)."""


def _raft_group(mgr: Manager, group_id: str) -> RaftGroup:
    """The runtime of a group ``mgr`` hosts.  Only scripted scenarios reach this far in (to
    fire a group's election timer on demand); everything else uses public hooks."""
    group = mgr._groups.get(group_id)
    if group is None or group.stopped:
        raise ServerNotFound(f"unknown group {group_id}")
    return group


class _SimApplication:
    """The MessagingApplication of one node."""

    def __init__(self, cluster: SimCluster, node: SimNode) -> None:
        self.cluster = cluster
        self.node = node

    def lookup_peer(self, peer_id: str) -> str:
        return peer_id  # SimTransport addresses are uuids

    def create_state_mgr(self, server_id: int, group_id: str) -> StateManager:
        return self.cluster._state_manager(self.node, group_id)




class Workload:
    """A background client: one write every ``interval`` to each group, through the node
    that currently leads it (or any node hosting it).  Stop it with :meth:`stop`."""

    def __init__(self, cluster: SimCluster, groups: Sequence[str], interval: float,
                 make_data: Callable[[str, int], bytes]) -> None:
        self.cluster = cluster
        self.groups = list(groups)
        self.interval = interval
        self.make_data = make_data
        self.scope = trio.CancelScope()
        self.count = 0

    async def run(self) -> None:
        with self.scope:
            while True:
                for gid in self.groups:
                    self.count += 1
                    self.cluster.write(gid, self.make_data(gid, self.count), note=False)
                await trio.sleep(self.interval)

    def stop(self) -> None:
        self.scope.cancel()


# ==============================================================================================
# The cluster
# ==============================================================================================
class SimCluster:
    """N Managers on one :class:`SimNetwork`.  Open it with :meth:`open`; see the module doc.

    Nodes are named ``n1``, ``n2``, ...; every method taking a node accepts a name, an index
    (0-based) or the :class:`SimNode`.  ``core_factory`` builds every node's cores, or maps
    node names to factories (nodes not named get :class:`RaftNode`); a node's factory can
    also be changed through :attr:`SimNode.core_factory` (effective at its next start).
    Groups are named ``g1``, ``g2``, ... in messages; the methods take the group id (a uuid
    string) that :meth:`create_group` returns.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        network: SimNetwork,
        *,
        seed: int = 0,
        params: RaftParams = SIM_PARAMS,
        state_machine_factory: Callable[[], StateMachine] = KVStateMachine,
        core_factory: Callable[..., RaftNode] | Mapping[str, Callable[..., RaftNode]] = RaftNode,
        disk_latency: tuple[float, float] = (0.0, 0.0),
        leave_on_removal: bool = True,
        configure: Callable[[ManagerConfig], ManagerConfig] | None = None,
        transport_factory: Callable[[SimNetwork, str], Transport] = SimTransport,
    ) -> None:
        self._nursery = nursery
        self.network = network
        self.rng = random.Random(seed)
        self.seed = seed
        self.params = params
        self.state_machine_factory = state_machine_factory
        self.core_factory = core_factory
        self.disk_latency = disk_latency
        self.leave_on_removal = leave_on_removal
        self._configure = configure
        self.transport_factory = transport_factory
        self.nodes: list[SimNode] = []
        self.group_ids: list[str] = []
        self._group_names: dict[str, str] = {}
        self.writes: list[Write] = []
        self.operations: list[Operation] = []
        self.checker = ClusterChecker(self)
        self._serials = itertools.count(1)
        self._core_serials: dict[int, int] = {}
        self._write_ids = itertools.count(1)
        self._acked_index: dict[str, set[int]] = {}
        network.on_deliver = self._on_deliver

    # ==========================================================================================
    # Opening
    # ==========================================================================================
    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        nodes: int = 3,
        *,
        seed: int = 0,
        link: LinkState | None = None,
        wire: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[SimCluster]:
        """Start ``nodes`` Managers on a new SimNetwork seeded from ``seed``.  Other keyword
        arguments go to the constructor (params, state_machine_factory, core_factory,
        disk_latency, leave_on_removal, configure, transport_factory)."""
        rng = random.Random(seed)
        async with (
            SimNetwork(seed=rng.getrandbits(64), default=link, wire=wire) as net,
            trio.open_nursery() as nursery,
        ):
            cluster = cls(nursery, net, seed=rng.getrandbits(64), **kwargs)
            for _ in range(nodes):
                await cluster.add_node()
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()

    async def add_node(self) -> SimNode:
        """Add and start one more node (it hosts no group until invited)."""
        k = len(self.nodes) + 1
        u = str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
        name = f"n{k}"
        factory = self.core_factory
        if isinstance(factory, Mapping):
            factory = factory.get(name, RaftNode)
        node = SimNode(name, u, to_server_id(u), factory)
        self.nodes.append(node)
        self.network.add_node(u)
        await self._start(node)
        return node

    # ==========================================================================================
    # Names
    # ==========================================================================================
    def node(self, ref: str | int | SimNode) -> SimNode:
        if isinstance(ref, SimNode):
            return ref
        if isinstance(ref, int):
            return self.nodes[ref]
        for n in self.nodes:
            if ref in (n.name, n.uuid):
                return n
        raise KeyError(f"no node {ref!r}")

    def group_name(self, group_id: str) -> str:
        return self._group_names.get(group_id, group_id[:8])

    def node_name_of(self, server_id: int) -> str:
        for n in self.nodes:
            if n.server_id == server_id:
                return n.name
        return str(server_id)

    def _name_of_address(self, address: str) -> str:
        for n in self.nodes:
            if n.uuid == address:
                return n.name
        return address[:8]

    def core_serial(self, core: RaftNode) -> int:
        return self._core_serials.get(id(core), 0)

    # ==========================================================================================
    # Node lifecycle
    # ==========================================================================================
    async def _start(self, node: SimNode) -> Manager:
        node.stopped = trio.Event()
        mgr: Manager = await self._nursery.start(self._run_node, node)
        return mgr

    async def _run_node(self, node: SimNode, *, task_status: trio.TaskStatus[Manager]) -> None:
        config = ManagerConfig(
            server_uuid=node.uuid,
            default_group_type=GROUP_TYPE,
            raft_request_timeout=1.0,
            client_request_timeout=3.0,
            leader_change_timeout=5.0,
        )
        if self._configure is not None:
            config = self._configure(config)
        node.incarnation += 1
        transport = self.transport_factory(self.network, node.uuid)
        started = False
        try:
            with trio.CancelScope() as scope:
                node.scope = scope
                async with Manager(config, _SimApplication(self, node), transport=transport,
                                   core_factory=self._core_factory_for(node)) as mgr:
                    mgr.register_group_type(GROUP_TYPE, self.params)
                    async with trio.open_nursery() as clients:
                        node.manager = mgr
                        node.clients = clients
                        started = True
                        task_status.started(mgr)
                        await trio.sleep_forever()
        except Exception as exc:  # a runtime bug: report it, keep the simulation going
            log.exception("%s died", node.name)
            self.checker.on_runtime_error(node.name, "", exc)
            if not started:
                raise
        finally:
            node.manager = None
            node.clients = None
            node.cores.clear()
            node.state_managers.clear()
            node.stopped.set()

    def _core_factory_for(self, node: SimNode) -> Callable[..., RaftNode]:
        base = node.core_factory

        def factory(server_id: int, params: RaftParams, **kwargs: Any) -> RaftNode:
            building, node.building = node.building, None
            kwargs["rng"] = random.Random(self.rng.getrandbits(64))
            core = base(server_id, params, **kwargs)
            if building is not None:
                self._instrument(node, building[0], core)
            return core

        return factory

    def _instrument(self, node: SimNode, group_id: str, core: RaftNode) -> None:
        serial = next(self._serials)
        self._core_serials[id(core)] = serial
        node.cores[group_id] = core
        checker = self.checker
        name = node.name
        advance = core.advance
        step = core.step

        def observed_advance(rd: Ready) -> None:
            advance(rd)
            checker.observe(name, group_id, serial, core)

        def observed_step(m: Message) -> None:
            checker.on_step(name, group_id, m)
            step(m)

        setattr(core, "advance", observed_advance)  # noqa: B010 - instance override
        setattr(core, "step", observed_step)  # noqa: B010
        checker.observe(name, group_id, serial, core)

    def _disk_latency(self) -> float:
        low, high = self.disk_latency
        return self.rng.uniform(low, high) if high > 0 else 0.0

    def _state_manager(self, node: SimNode, group_id: str) -> SimStateManager:
        disk = node.disks.get(group_id)
        if disk is None or disk.destroyed:
            gen = disk.generation + 1 if disk is not None else 1
            disk = SimDisk(node.name, group_id, gen, node.server_id, node.uuid,
                           SimLogStore(self._disk_latency))
            node.disks[group_id] = disk
        smgr = SimStateManager(self, node, disk, self.state_machine_factory(),
                               next(self._serials))
        node.state_managers[group_id] = smgr
        return smgr

    async def crash(self, ref: str | int | SimNode) -> None:
        """Stop the node at once: everything it had not persisted is lost."""
        node = self.node(ref)
        if node.scope is None or node.manager is None:
            return
        self.checker.note(f"crash {node.name}")
        node.scope.cancel()
        await node.stopped.wait()

    async def restart(self, ref: str | int | SimNode, *, rejoin: bool = True) -> None:
        """Start a crashed node again from its disks and rejoin the groups it held."""
        node = self.node(ref)
        if node.manager is not None:
            return
        self.checker.note(f"restart {node.name}")
        mgr = await self._start(node)
        if not rejoin:
            return
        for gid, disk in list(node.disks.items()):
            if disk.destroyed or not node.runs(mgr):
                continue
            try:
                await mgr.join_group(gid, GROUP_TYPE, self._state_manager(node, gid))
            except RaftError as exc:
                self.checker.note(f"{node.name} could not rejoin {self.group_name(gid)}: "
                                  f"{exc!r}")

    # ==========================================================================================
    # Network (by node name)
    # ==========================================================================================
    def _addresses(self, refs: Iterable[str | int | SimNode]) -> list[str]:
        return [self.node(r).uuid for r in refs]

    def partition(self, *sides: Iterable[str | int | SimNode]) -> None:
        """Symmetric partition between ``sides`` (nodes on no side are isolated)."""
        sides_l = [self._addresses(s) for s in sides]
        self.network.partition(*sides_l)
        shown = [[self._name_of_address(a) for a in s] for s in sides_l]
        self.checker.note(f"partition {shown}")

    def cut(self, sources: Iterable[str | int | SimNode],
            destinations: Iterable[str | int | SimNode]) -> None:
        """One-way partition: messages from ``sources`` to ``destinations`` are lost."""
        src, dst = self._addresses(sources), self._addresses(destinations)
        self.network.cut(src, dst)
        self.checker.note(f"cut {[self._name_of_address(a) for a in src]} -> "
                          f"{[self._name_of_address(a) for a in dst]}")

    def isolate(self, ref: str | int | SimNode) -> None:
        node = self.node(ref)
        self.network.isolate(node.uuid)
        self.checker.note(f"isolate {node.name}")

    def heal(self, *, reset: bool = False) -> None:
        """Bring every link up (``reset``: also clear drop/duplicate/delay and filters)."""
        self.network.heal(reset=reset)
        self.checker.note("heal" + (" (reset links)" if reset else ""))

    def configure_links(self, *, drop: float | None = None, duplicate: float | None = None,
                        delay: tuple[float, float] | None = None) -> None:
        self.network.configure(drop=drop, duplicate=duplicate, delay=delay)
        self.checker.note(f"links: drop={drop} duplicate={duplicate} delay={delay}")

    def recent_messages(self, group_id: str, count: int) -> list[str]:
        out: list[str] = []
        for t, m, fate in reversed(self.network.trace):
            env = m.envelope
            if env is not None and env.group_id != group_id:
                continue
            out.append(f"{t:9.3f} {m.describe(self._name_of_address)}"
                       + ("" if fate == "sent" else f" [{fate}]"))
            if len(out) >= count:
                break
        return out[::-1]

    def _on_deliver(self, dst: str, group_id: str, env: GroupEnvelope) -> None:
        self.checker.on_deliver(group_id, env.message)

    # ==========================================================================================
    # Groups, membership, leadership
    # ==========================================================================================
    async def create_group(
        self,
        members: Sequence[str | int | SimNode] | None = None,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - simulated seconds, part of the helper's API
        all_at_once: bool = False,
    ) -> str:
        """Create a group led by the first of ``members`` (default: every node) and add the
        others one by one.  Returns its id.  Needs a working network.

        ``all_at_once``: every member calls ``create_group(members=...)`` instead, so the
        group starts with all of them (one election, no joins)."""
        nodes = [self.node(m) for m in members] if members is not None else list(self.nodes)
        gid = str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
        self.group_ids.append(gid)
        self._group_names[gid] = f"g{len(self.group_ids)}"
        checker = self.checker
        checker.group(gid)
        checker.note(f"create {self.group_name(gid)} on {[n.name for n in nodes]}")
        for n in nodes:
            checker.on_invite(gid, n.server_id)
        if all_at_once:
            uuids = [n.uuid for n in nodes]
            with trio.fail_after(timeout):
                async with trio.open_nursery() as nursery:
                    for n in nodes:
                        nursery.start_soon(functools.partial(
                            n.mgr.create_group, gid, GROUP_TYPE, members=uuids))
            return gid
        with trio.fail_after(timeout):
            await nodes[0].mgr.create_group(gid, GROUP_TYPE)
            for n in nodes[1:]:
                while True:
                    leader = self.leader(gid)
                    try:
                        if leader is None:
                            raise RaftError("no leader yet")
                        await leader.mgr.add_member(gid, n.uuid)
                        break
                    except RaftError:
                        await trio.sleep(0.1)
        return gid

    def leader(self, group_id: str) -> SimNode | None:
        """The live node leading the group in the highest term, if any."""
        best: tuple[int, SimNode] | None = None
        for n in self.nodes:
            core = n.cores.get(group_id)
            if (core is not None and n.hosts(group_id) and core.is_leader
                    and (best is None or core.term > best[0])):
                best = (core.term, n)
        return None if best is None else best[1]

    def members(self, group_id: str) -> list[SimNode]:
        """Members of the group's configuration, as its leader (or else any host) sees it."""
        src = self.leader(group_id) or next(
            (n for n in self.nodes if n.hosts(group_id) and group_id in n.cores), None)
        if src is None:
            return []
        ids = src.cores[group_id].config.ids
        return [n for n in self.nodes if n.server_id in ids]

    def hosts(self, group_id: str) -> list[SimNode]:
        return [n for n in self.nodes if n.hosts(group_id)]

    def live_cores(self, group_id: str) -> list[tuple[SimNode, RaftNode]]:
        return [(n, n.cores[group_id]) for n in self.nodes
                if group_id in n.cores and n.hosts(group_id)]

    def logs_of(self, group_id: str) -> list[tuple[str, int, int, list[LogEntry]]]:
        """Every log of the group, live and durable: (source name, start index, term of the
        entry before the start (the compaction boundary), entries)."""
        out: list[tuple[str, int, int, list[LogEntry]]] = []
        for n in self.nodes:
            disk = n.disks.get(group_id)
            if disk is not None and not disk.destroyed:
                start, entries = disk.entries()
                out.append((f"{n.name} (disk {disk.generation})", start,
                            disk.log.term_at(start - 1), entries))
            core = n.cores.get(group_id)
            if core is not None and n.up:
                lg = core.log
                out.append((f"{n.name} (core {self.core_serial(core)})", lg.start_index,
                            lg.boundary_term, lg.slice(lg.start_index, lg.last_index + 1)))
        return out

    def campaign(self, ref: str | int | SimNode, group_id: str) -> None:
        """Fire the node's election timer for the group now (scripted scenarios)."""
        node = self.node(ref)
        self.checker.note(f"{node.name} campaigns in {self.group_name(group_id)}")
        self._spawn(node, f"{node.name} campaigns", lambda m: _raft_group(m, group_id)
                    .run_command(lambda core: core.election_timeout()))

    def _spawn(self, node: SimNode, label: str,
               fn: Callable[[Manager], Awaitable[object]]) -> Operation:
        op = Operation(label)
        self.operations.append(op)
        if node.clients is None or node.manager is None:
            op.status, op.error = "failed", f"{node.name} is down"
            op.done.set()
            return op
        mgr = node.manager

        async def run() -> None:
            try:
                await fn(mgr)
            except RaftError as exc:
                op.status, op.error = "failed", f"{type(exc).__name__}: {exc}"
            else:
                op.status = "done"
            finally:
                if op.status == "pending":
                    op.status = "crashed"
                op.done.set()
                self.checker.note(f"{label}: {op.status} {op.error}".rstrip())

        node.clients.start_soon(run)
        return op

    def add_member(self, group_id: str, ref: str | int | SimNode) -> Operation:
        """Ask the group's leader to add the node (in the background)."""
        node = self.node(ref)
        self.checker.on_invite(group_id, node.server_id)
        label = f"add {node.name} to {self.group_name(group_id)}"
        leader = self.leader(group_id)
        if leader is None:
            return self._refused(label, "no leader")
        return self._spawn(leader, label, lambda m: m.add_member(group_id, node.uuid))

    def remove_member(self, group_id: str, ref: str | int | SimNode) -> Operation:
        """Ask the group's leader to remove the node (in the background)."""
        node = self.node(ref)
        label = f"remove {node.name} from {self.group_name(group_id)}"
        leader = self.leader(group_id)
        if leader is None:
            return self._refused(label, "no leader")
        return self._spawn(leader, label, lambda m: m.rem_member(group_id, node.uuid))

    def transfer_leadership(self, group_id: str, ref: str | int | SimNode) -> Operation:
        """Ask the node to take over the group's leadership (``become_leader``)."""
        node = self.node(ref)
        label = f"{node.name} takes over {self.group_name(group_id)}"
        if not node.hosts(group_id):
            return self._refused(label, f"{node.name} does not host it")
        return self._spawn(node, label, lambda m: m.become_leader(group_id))

    def _refused(self, label: str, why: str) -> Operation:
        op = Operation(label, "failed", why)
        op.done.set()
        self.operations.append(op)
        self.checker.note(f"{label}: refused ({why})")
        return op

    # ==========================================================================================
    # Client writes
    # ==========================================================================================
    def write(self, group_id: str, data: bytes, *,
              via: str | int | SimNode | None = None, note: bool = True) -> Write:
        """Send one write (in the background) through ``via`` (default: the group's leader,
        else any node hosting it).  Returns its :class:`Write` record.  ``note``: mention it
        in the history that violations show (workloads do not, to keep it short)."""
        node = self.node(via) if via is not None else self.leader(group_id)
        if node is None:
            hosts = self.hosts(group_id)
            node = hosts[0] if hosts else self.nodes[0]
        w = Write(next(self._write_ids), group_id, bytes(data), node.name, trio.current_time())
        self.writes.append(w)
        self.checker.on_propose(group_id, w.data)
        if note:
            self.checker.note(f"write {w.data!r} to {self.group_name(group_id)} via {node.name}")
        if node.clients is None or node.manager is None or (
                node.scope is not None and node.scope.cancel_called):  # or crashing now
            self._finish(w, "failed", f"{node.name} is down")
            return w
        node.clients.start_soon(self._do_write, node, node.manager, w)
        return w

    async def write_and_wait(self, group_id: str, data: bytes, *,
                             via: str | int | SimNode | None = None) -> Write:
        w = self.write(group_id, data, via=via)
        await w.done.wait()
        return w

    def _finish(self, w: Write, status: str, error: str = "") -> None:
        w.status, w.error, w.finished = status, error, trio.current_time()
        w.done.set()

    async def _do_write(self, node: SimNode, mgr: Manager, w: Write) -> None:
        gid = w.group_id
        try:
            results = await mgr.append_entries(gid, [w.data])
        except RaftError as exc:
            self._finish(w, "failed", type(exc).__name__)
            return
        except BaseException:  # the node crashed (Cancelled) or a bug
            self._finish(w, "crashed")
            raise
        w.result = results[0] if results else None
        core = node.cores.get(gid)
        smgr = node.state_managers.get(gid)
        if core is not None and smgr is not None:
            taken = self._acked_index.setdefault(gid, set())
            w.index = self.checker.on_ack(node.name, gid, smgr.life, w.data, core, taken)
            if w.index is not None:
                taken.add(w.index)
        self._finish(w, "acked")

    def start_workload(
        self,
        groups: Sequence[str] | None = None,
        *,
        interval: float = 0.2,
        make_data: Callable[[str, int], bytes] | None = None,
    ) -> Workload:
        """Start a background client writing to every group (default: all) each
        ``interval`` simulated seconds.  Every write is recorded in :attr:`writes`."""
        def default(gid: str, k: int) -> bytes:
            return b"set %s-k%d w%d" % (self.group_name(gid).encode(), k % 7, k)

        wl = Workload(self, groups or list(self.group_ids), interval, make_data or default)
        self._nursery.start_soon(wl.run)
        return wl

    # ==========================================================================================
    # Reading state
    # ==========================================================================================
    def applied_log(self, ref: str | int | SimNode, group_id: str) -> list[tuple[int, bytes]]:
        """What the node's current state machine applied for the group: (index, data) of
        every APP entry, in order ([] if the node does not host it)."""
        node = self.node(ref)
        smgr = node.state_managers.get(group_id)
        if smgr is None:
            return []
        recs = self.checker.applied.get((node.name, group_id, smgr.life), [])
        return [(i, data) for i, (kind, data) in recs if kind == "app"]

    def state_machine(self, ref: str | int | SimNode, group_id: str) -> StateMachine | None:
        """The application's state machine of the group on the node (its current life)."""
        smgr = self.node(ref).state_managers.get(group_id)
        return smgr.inner_state_machine if smgr is not None else None

    def applied_index(self, ref: str | int | SimNode, group_id: str) -> int:
        node = self.node(ref)
        core = node.cores.get(group_id)
        return core.applied if core is not None and node.hosts(group_id) else 0

    # ==========================================================================================
    # Time and checks
    # ==========================================================================================
    async def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of (simulated) time pass."""
        await trio.sleep(seconds)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float,  # noqa: ASYNC109 - simulated seconds
        poll: float = 0.01,
    ) -> bool:
        """Wait until ``predicate()`` holds (checked every ``poll`` seconds); False if it
        did not within ``timeout``."""
        with trio.move_on_after(timeout):
            while not predicate():  # noqa: ASYNC110 - polling simulated time is cheap
                await trio.sleep(poll)
            return True
        return False

    def check(self) -> None:
        """:func:`~.checkers.check_invariants` of this cluster."""
        check_invariants(self)

    async def check_liveness(
        self,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - simulated seconds
    ) -> float:
        """Repair everything (heal and reset every link, restart crashed nodes), then
        require every group to elect a leader, commit a new write and bring every member up
        to date within ``timeout`` simulated seconds.  Returns the time it took.

        Raises:
            LivenessViolation: a group did not make it in time.
        """
        self.heal(reset=True)
        for n in self.nodes:
            if not n.up:
                await self.restart(n)
        start = trio.current_time()
        deadline = start + timeout
        for gid in self.group_ids:
            marker = b"liveness %s %d" % (self.group_name(gid).encode(),
                                          self.rng.getrandbits(32))
            w: Write | None = None
            with trio.move_on_at(deadline):
                while True:
                    leader = self.leader(gid)
                    if leader is not None and (w is None or w.done.is_set()):
                        if w is not None and w.acked:
                            break
                        w = self.write(gid, marker, via=leader, note=False)
                    await trio.sleep(0.05)
            if w is None or not w.acked or w.index is None:
                self._liveness_failed(gid, "no leader committed a new write", timeout)
                return timeout
            index = w.index

            def caught_up(gid: str = gid, index: int = index) -> bool:
                return all(self.applied_index(n, gid) >= index for n in self.members(gid))

            with trio.move_on_at(deadline):
                while not caught_up():  # noqa: ASYNC110 - polling simulated time
                    await trio.sleep(0.05)
            if not caught_up():
                behind = [n.name for n in self.members(gid)
                          if self.applied_index(n, gid) < index]
                self._liveness_failed(gid, f"members {behind} did not catch up to {index}",
                                      timeout)
        return trio.current_time() - start

    def _liveness_failed(self, gid: str, what: str, timeout: float) -> None:
        c = self.checker
        raise LivenessViolation(
            "Liveness", f"{what} within {timeout:g}s after every fault was repaired",
            group=self.group_name(gid), history=list(c.history),
            messages=self.recent_messages(gid, 20), when=trio.current_time())

    # -- hooks from state managers ------------------------------------------------------------
    def _on_event(self, node: SimNode, group_id: str, event: Event) -> None:
        g = self.group_name(group_id)
        if isinstance(event, BecomeLeader):
            self.checker.note(f"{node.name} leads {g} (term {event.term})")
        elif isinstance(event, NewConfig) and event.committed:
            names = [self.node_name_of(s.id) for s in event.config.servers]
            self.checker.note(f"{node.name}: {g} config committed {names}")
        elif isinstance(event, JoinedCluster):
            self.checker.note(f"{node.name} joined {g}")
        elif isinstance(event, RemovedFromCluster):
            self.checker.note(f"{node.name} removed from {g}")

    def _on_leave(self, node: SimNode, group_id: str) -> None:
        if not self.leave_on_removal or node.clients is None or node.manager is None:
            return
        mgr = node.manager

        async def leave() -> None:
            await mgr.leave_group(group_id)
            if node.runs(mgr):
                node.cores.pop(group_id, None)
                node.state_managers.pop(group_id, None)

        node.clients.start_soon(leave)
