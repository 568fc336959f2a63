"""Helpers for the security tests: certificates, a checked live cluster, raw clients.

* :func:`make_certs` writes a trustme CA, node certificates (for 127.0.0.1 / localhost), a
  certificate from another CA and an expired one into a directory.
* :class:`LiveCluster` runs real Managers on loopback (gRPC, optionally TLS and tokens) and
  wires every group core into the harness's :class:`~nuraft_mesg.testing.checkers.
  ClusterChecker` (Election Safety, Leader Append-Only, Log Matching, Leader Completeness,
  State Machine Safety, monotonic term/commit, acknowledged writes), as the simulation
  harness does for simulated nodes.
* :func:`raw_call` sends arbitrary bytes as the body of any method of a node.
"""

from __future__ import annotations

import datetime
import itertools
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trustme

from nuraft_mesg.errors import RaftError
from nuraft_mesg.manager import Manager, ManagerConfig
from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import Ready
from nuraft_mesg.raft.types import LogEntry, Message
from nuraft_mesg.storage.interfaces import StateManager
from nuraft_mesg.storage.memory import KVStateMachine, MemoryStateManager
from nuraft_mesg.testing.checkers import ClusterChecker
from nuraft_mesg.testing.cluster import RecordingStateMachine
from nuraft_mesg.transport.base import Status, TransportError
from nuraft_mesg.transport.grpc import GrpcTransport

GROUP_TYPE = "sec"
PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))
LOCALHOST = "127.0.0.1"

RAFT_PATH = ("nuraft_mesg.Messaging", "RaftStep", "nuraft_mesg.RaftGroupMsg")
DATA_PATH = ("nuraft_mesg.DataService", "Call", "nuraft_mesg.DataServiceRequest")
STATUS_PATH = ("nuraft_mesg.Admin", "Status", "nuraft_mesg.StatusRequest")


# -- certificates -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Certs:
    """PEM files (paths) for the TLS tests."""

    ca: str
    """The cluster's CA."""
    node_cert: str
    node_key: str
    """Valid for 127.0.0.1 and localhost, signed by ``ca`` (server and client use)."""
    client_cert: str
    client_key: str
    """A second valid certificate from ``ca`` (an external client's)."""
    other_ca: str
    other_cert: str
    other_key: str
    """A CA the cluster does not trust, and a certificate it signed."""
    expired_cert: str
    expired_key: str
    """Signed by ``ca`` but expired yesterday."""


def _write_leaf(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[str, str]:
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA()
    other = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    ca_path, other_path = directory / "ca.pem", directory / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    other.cert_pem.write_to_path(str(other_path))
    node = _write_leaf(ca.issue_cert(LOCALHOST, "localhost"), directory, "node")
    client = _write_leaf(ca.issue_cert("client.example"), directory, "client")
    foreign = _write_leaf(other.issue_cert(LOCALHOST, "localhost"), directory, "foreign")
    expired = _write_leaf(
        ca.issue_cert(LOCALHOST, "localhost", not_before=now - datetime.timedelta(days=2),
                      not_after=now - datetime.timedelta(days=1)),
        directory, "expired",
    )
    return Certs(str(ca_path), *node, *client, str(other_path), *foreign, *expired)


# -- a live cluster under the harness's checkers ----------------------------------------------
@dataclass(eq=False)
class LiveNode:
    name: str
    uuid: str
    server_id: int = 0
    manager: Manager | None = None
    cores: dict[str, RaftNode] = field(default_factory=dict)
    building: str | None = None
    state_managers: dict[str, MemoryStateManager] = field(default_factory=dict)

    @property
    def mgr(self) -> Manager:
        assert self.manager is not None, f"{self.name} is down"
        return self.manager


class _App:
    """The MessagingApplication of one node: a shared directory, state machines that report
    every apply to the checker, and a note of which group the next core is built for."""

    def __init__(self, cluster: LiveCluster, node: LiveNode) -> None:
        self.cluster = cluster
        self.node = node

    def lookup_peer(self, peer_id: str) -> str:
        return self.cluster.directory.get(peer_id, "")

    def create_state_mgr(self, server_id: int, group_id: str) -> StateManager:
        node, checker = self.node, self.cluster.checker
        node.building = group_id  # the Manager builds the group's core right after this

        def applied(index: int, item: tuple[str, bytes]) -> None:
            checker.on_apply(node.name, group_id, 1, index, item, node.cores.get(group_id))

        smgr = MemoryStateManager(
            server_id, node.uuid, state_machine=RecordingStateMachine(KVStateMachine(), applied)
        )
        node.state_managers[group_id] = smgr
        return smgr


class LiveCluster:
    """Real Managers on loopback, observed by a ClusterChecker (see the module doc).

    ``configure(i, config)`` adjusts node ``i``'s ManagerConfig (TLS, tokens, limits)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        configure: Callable[[int, ManagerConfig], ManagerConfig] | None = None,
    ) -> None:
        self._nursery = nursery
        self._configure = configure
        self.directory: dict[str, str] = {}
        self.nodes: list[LiveNode] = []
        self.group_ids: list[str] = []
        self.checker = ClusterChecker(self)  # type: ignore[arg-type]  # duck-typed cluster
        self._serials = itertools.count(1)
        self._core_serials: dict[int, int] = {}
        self._acked: dict[str, set[int]] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls, n: int = 3, configure: Callable[[int, ManagerConfig], ManagerConfig] | None = None
    ) -> AsyncIterator[LiveCluster]:
        async with trio.open_nursery() as nursery:
            cluster = cls(nursery, configure)
            for _ in range(n):
                await cluster.add_node()
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()

    # -- what ClusterChecker asks of its cluster ------------------------------------------------
    def group_name(self, group_id: str) -> str:
        try:
            return f"g{self.group_ids.index(group_id) + 1}"
        except ValueError:
            return group_id[:8]

    def node_name_of(self, server_id: int) -> str:
        return next((n.name for n in self.nodes if n.server_id == server_id), str(server_id))

    def core_serial(self, core: RaftNode) -> int:
        return self._core_serials.get(id(core), 0)

    def recent_messages(self, group_id: str, count: int) -> list[str]:
        return []

    def logs_of(self, group_id: str) -> list[tuple[str, int, int, list[LogEntry]]]:
        """Every live log of the group: (source, start index, boundary term, entries), as
        :meth:`SimCluster.logs_of <nuraft_mesg.testing.cluster.SimCluster.logs_of>`."""
        out = []
        for n in self.nodes:
            core = n.cores.get(group_id)
            if core is not None and n.manager is not None and group_id in n.manager.group_ids:
                lg = core.log
                out.append((f"{n.name} (core)", lg.start_index, lg.boundary_term,
                            lg.slice(lg.start_index, lg.last_index + 1)))
        return out

    def lookup(self, peer: str) -> str:
        """Peer uuid -> "host:port" ("" if unknown), for clients of the cluster."""
        return self.directory.get(peer, "")

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait (no polling) until ``predicate()`` holds, re-checking whenever a node's groups
        change.  Bound it with ``trio.fail_after``."""
        while not predicate():
            async with trio.open_nursery() as race:
                async def watch(mgr: Manager) -> None:
                    await mgr.wait_changed()
                    race.cancel_scope.cancel()

                for n in self.nodes:
                    if n.manager is not None:
                        race.start_soon(watch, n.manager)

    def check(self) -> None:
        """Run the checker's whole-cluster checks; raise the first violation seen so far."""
        self.checker.check()

    # -- nodes ---------------------------------------------------------------------------------
    async def add_node(self) -> LiveNode:
        node = LiveNode(f"n{len(self.nodes) + 1}", str(uuidlib.uuid4()))
        self.nodes.append(node)
        await self._nursery.start(self._run, node, len(self.nodes) - 1)
        return node

    def _core_factory(self, node: LiveNode) -> Callable[..., RaftNode]:
        checker = self.checker

        def factory(server_id: int, params: RaftParams, **kwargs: Any) -> RaftNode:
            core = RaftNode(server_id, params, **kwargs)
            gid, node.building = node.building, None
            if gid is None:
                return core
            serial = next(self._serials)
            self._core_serials[id(core)] = serial
            node.cores[gid] = core
            advance, step = core.advance, core.step

            def observed_advance(rd: Ready) -> None:
                advance(rd)
                checker.observe(node.name, gid, serial, core)

            def observed_step(m: Message) -> None:
                checker.on_step(node.name, gid, m)
                step(m)

            setattr(core, "advance", observed_advance)  # noqa: B010 - instance override
            setattr(core, "step", observed_step)  # noqa: B010
            checker.observe(node.name, gid, serial, core)
            return core

        return factory

    async def _run(self, node: LiveNode, index: int, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = ManagerConfig(server_uuid=node.uuid, default_group_type=GROUP_TYPE,
                               raft_request_timeout=1.0)
        if self._configure is not None:
            config = self._configure(index, config)
        try:
            async with Manager(config, _App(self, node),
                               core_factory=self._core_factory(node)) as mgr:
                mgr.register_group_type(GROUP_TYPE, PARAMS)
                node.server_id = mgr.server_id
                self.directory[node.uuid] = f"{LOCALHOST}:{mgr.port}"
                node.manager = mgr
                task_status.started()
                await trio.sleep_forever()
        finally:
            node.manager = None

    # -- groups --------------------------------------------------------------------------------
    async def create_group(self, members: Sequence[LiveNode] | None = None,
                           timeout: float = 20.0) -> str:  # noqa: ASYNC109
        nodes = list(members) if members is not None else list(self.nodes)
        gid = str(uuidlib.uuid4())
        self.group_ids.append(gid)
        for n in nodes:
            self.checker.on_invite(gid, n.server_id)
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
                        await trio.sleep(0.05)
        return gid

    def leader(self, group_id: str) -> LiveNode | None:
        best: tuple[int, LiveNode] | None = None
        for n in self.nodes:
            core = n.cores.get(group_id)
            if (core is not None and n.manager is not None and group_id in n.manager.group_ids
                    and core.is_leader and (best is None or core.term > best[0])):
                best = (core.term, n)
        return None if best is None else best[1]

    async def write(self, group_id: str, data: bytes, timeout: float = 20.0) -> int:  # noqa: ASYNC109
        """Write through the leader (retrying while there is none); returns the index the
        checker found it applied at.  Proves the group still commits."""
        self.checker.on_propose(group_id, data)
        with trio.fail_after(timeout):
            while True:
                leader = self.leader(group_id)
                if leader is not None:
                    try:
                        await leader.mgr.append_entries(group_id, [data])
                    except RaftError:
                        pass
                    else:
                        break
                await trio.sleep(0.05)
        core = leader.cores[group_id]
        taken = self._acked.setdefault(group_id, set())
        index = self.checker.on_ack(leader.name, group_id, 1, data, core, taken)
        assert index is not None, self.checker.violations
        taken.add(index)
        return index

    def terms(self, group_id: str) -> dict[str, int]:
        return {n.name: n.cores[group_id].term for n in self.nodes if group_id in n.cores}


# -- raw calls --------------------------------------------------------------------------------
async def raw_call(
    transport: GrpcTransport,
    peer: str,
    payload: bytes,
    path: tuple[str, str, str] = RAFT_PATH,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> tuple[Status, bytes]:
    """Send ``payload`` (any bytes) as the one message of a unary call; the status and reply
    bytes (empty unless OK)."""
    try:
        data = await transport._round_trip(peer, payload, timeout, path)
    except TransportError as exc:
        return exc.status, b""
    return Status.OK, data


# -- bookkeeping of hostile inputs (reported at the end of the run, see conftest.py) -----------
INPUTS: dict[str, int] = {}


def count_input(kind: str, n: int = 1) -> None:
    INPUTS[kind] = INPUTS.get(kind, 0) + n
