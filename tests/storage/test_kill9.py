"""kill -9 with real processes: three ``nuraft-mesg server`` nodes on loopback, writers that
record every acknowledged write, and nodes (the leader included) killed with SIGKILL and
restarted, one at a time and then all at once -- once with the whole log kept, once with
snapshots (``--snapshot-distance``), so that every restart has to rebuild its state machine
from the snapshot its store persisted.

At the end every node is stopped cleanly and its database read back (through
:class:`SqliteStore`, so checksums are verified; its stored snapshot restored into a fresh
state machine, then the committed log after it replayed): each replica's committed history must
hold every acknowledged write exactly once, in acknowledgement order, and the replicas'
histories (so the KV states they apply) must be identical.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import RaftError
from nuraft_mesg.raft.types import ClusterConfig, LogType, SnapshotMeta
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.storage.sqlite import SqliteStore
from nuraft_mesg.testing.client import RaftClient
from nuraft_mesg.transport.status import GroupStatus

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")

GROUP_TYPE = "kv"
SLOW_DISK_NODE = Path(__file__).with_name("slow_disk_node.py")


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Node:
    name: str
    uuid: str
    port: int
    data_dir: Path
    log_path: Path
    proc: trio.Process | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ready_file(self) -> Path:
        return self.data_dir.parent / f"{self.name}.ready"


@dataclass
class Cluster:
    nodes: list[Node]
    group_id: str
    acked: list[tuple[int, bytes]] = field(default_factory=list)
    """(writer, payload) in acknowledgement order, per writer sequential."""
    attempted: set[bytes] = field(default_factory=set)
    last_leader: str | None = None
    """The node that accepted the latest write: it was leading then."""
    kills: int = 0
    extra_args: list[str] = field(default_factory=list)
    """More ``nuraft-mesg server`` arguments for every node."""
    script: Path = SLOW_DISK_NODE
    """The node program (the ``nuraft-mesg`` command, patched for the test)."""
    _acked_event: trio.Event = field(default_factory=trio.Event)

    def ack(self, wid: int, payload: bytes, leader: str) -> None:
        self.acked.append((wid, payload))
        self.last_leader = leader
        self._acked_event.set()
        self._acked_event = trio.Event()

    async def wait_acked(self, count: int) -> None:
        """Wait until ``count`` writes were acknowledged in all (progress is required)."""
        with trio.move_on_after(15):
            while len(self.acked) < count:
                await self._acked_event.wait()
            return
        errors = [line for n in self.nodes
                  for line in n.log_path.read_text(errors="replace").splitlines()
                  if " ERROR " in line]
        raise AssertionError(
            f"no progress for 15 s ({len(self.acked)} of {count} writes acknowledged); "
            f"{len(errors)} ERROR lines in the node logs, the last ones:\n"
            + "\n".join(errors[-5:])
        )

    def command(self, node: Node, *, create: bool) -> list[str]:
        cmd = [sys.executable, str(self.script), "-v", "server", "--uuid", node.uuid,
               "--port", str(node.port), "--data-dir", str(node.data_dir),
               "--group-type", GROUP_TYPE, "--ready-file", str(node.ready_file)]
        for other in self.nodes:
            if other is not node:
                cmd += ["--peer", f"{other.uuid}={other.address}"]
        if create:
            cmd += ["--create-group", self.group_id]
        return cmd + self.extra_args

    async def start(self, node: Node, *, create: bool = False) -> None:
        assert node.proc is None
        node.ready_file.unlink(missing_ok=True)
        node.starts += 1
        with open(node.log_path, "ab") as out:  # noqa: ASYNC230 - test setup
            out.write(f"\n==== start {node.starts} ====\n".encode())
            out.flush()
            node.proc = await trio.lowlevel.open_process(
                self.command(node, create=create), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def wait_ready(self, node: Node) -> None:
        with trio.fail_after(20):
            while not node.ready_file.exists():
                assert node.proc is not None
                if node.proc.poll() is not None:
                    raise AssertionError(f"{node.name} exited: {self.tail(node)}")
                await trio.sleep(0.05)
        assert json.loads(node.ready_file.read_text())["port"] == node.port

    async def kill(self, node: Node) -> None:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        await node.proc.wait()
        node.proc = None
        self.kills += 1

    async def bootstrap(self, nodes: list[Node]) -> None:
        """Start every node; the first creates the group and adds the others."""
        for i, node in enumerate(nodes):
            await self.start(node, create=(i == 0))
        for node in nodes:
            await self.wait_ready(node)

    async def kill_everyone(self, nodes: list[Node], *, down_for: float = 0.0) -> None:
        """kill -9 every node at once, keep them down ``down_for`` seconds (a pause, not a
        wait for anything), restart them and wait until each serves again."""
        for node in nodes:
            await self.kill(node)
        await trio.sleep(down_for)
        for node in nodes:
            await self.start(node)
        for node in nodes:
            await self.wait_ready(node)

    async def stop(self, node: Node) -> None:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            code = await node.proc.wait()
        node.proc = None
        assert code == 0, f"{node.name} exited with {code}: {self.tail(node)}"

    async def kill_leftovers(self) -> None:
        """Kill whatever node is still running (a test's ``finally``)."""
        for node in self.nodes:
            if node.proc is not None:
                node.proc.kill()
                await node.proc.wait()

    @staticmethod
    def tail(node: Node) -> str:
        return node.log_path.read_text(errors="replace")[-3000:]


@dataclass
class Stored:
    """What a stopped node's database holds for the group."""

    history: list[bytes]
    """The APP payloads it committed, in order: its stored snapshot's, then the log's."""
    log_start: int
    snapshot: SnapshotMeta | None


def read_back(node: Node, group_id: str,
              wrap: Callable[[KVStateMachine], StateMachine] | None = None) -> Stored:
    """Restart ``node``'s state machine from its database, as the node itself would: the
    stored snapshot restored into a fresh KVStateMachine (by the store; through ``wrap(kv)``
    when the nodes wrap theirs), then the committed log after it applied.  The history is
    what reached the KVStateMachine."""
    store = SqliteStore(node.data_dir)
    try:
        (rec,) = [r for r in store.groups() if r.group_id == group_id]
        assert rec.corrupt is None
        kv = KVStateMachine()
        sm = wrap(kv) if wrap is not None else kv
        smgr = store.state_manager(group_id, server_id=rec.server_id, state_machine=sm)
        state = smgr.read_state()
        assert state is not None
        log = smgr.load_log_store()
        first = sm.last_commit_index() + 1
        assert first >= log.start_index(), "the log does not continue the snapshot"
        last = min(state.commit, log.last_index())
        if last >= first:
            for index, entry in enumerate(log.entries(first, last + 1), start=first):
                if entry.type == LogType.APP:
                    sm.commit(index, entry.buffer)
                elif entry.type == LogType.CONFIG:
                    sm.commit_config(index, ClusterConfig.decode(entry.buffer))
        stored = Stored([d for _, d in kv.applied], log.start_index(),
                        store.stored_snapshot(group_id))
    finally:
        store.close()
    return stored


def three_nodes(tmp_path: Path) -> list[Node]:
    ports = _free_ports(3)
    return [
        Node(f"node{i + 1}", str(uuid.uuid4()), ports[i], tmp_path / f"node{i + 1}",
             tmp_path / f"node{i + 1}.log")
        for i in range(3)
    ]


async def writer(cluster: Cluster, wid: int, peers: dict[str, str], stop: trio.Event) -> None:
    async with RaftClient(peers, cluster.group_id, GROUP_TYPE, rng=random.Random(wid)) as client:
        seq = 0
        while not stop.is_set():
            seq += 1
            payload = f"set w{wid}.{seq} {seq}".encode()  # unique: never resent
            cluster.attempted.add(payload)
            try:
                ack = await client.append([payload], timeout=2.0)
            except RaftError:
                await trio.sleep(0.05)
                continue
            cluster.ack(wid, payload, ack.leader)


async def test_kill9_random_nodes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random()
    nodes = three_nodes(tmp_path)
    cluster = Cluster(nodes, str(uuid.uuid4()))
    peers = {n.uuid: n.address for n in nodes}
    stop = trio.Event()
    try:
        with trio.fail_after(100):
            await cluster.bootstrap(nodes)
            async with trio.open_nursery() as nursery:
                for wid in range(3):
                    nursery.start_soon(writer, cluster, wid, peers, stop)
                await trio.sleep(1.0)
                # One node at a time, the leader every other round.
                for round_ in range(9):
                    acked_before = len(cluster.acked)
                    victim = rng.choice(nodes)
                    if round_ % 2 == 0:
                        victim = next((n for n in nodes if n.uuid == cluster.last_leader),
                                      victim)
                    await cluster.kill(victim)
                    await trio.sleep(rng.uniform(0.1, 0.8))
                    await cluster.start(victim)
                    await cluster.wait_ready(victim)
                    # Progress between kills: the group keeps accepting writes.
                    await cluster.wait_acked(acked_before + 5)
                # Every node at once.
                acked_before = len(cluster.acked)
                await cluster.kill_everyone(nodes, down_for=0.3)
                await cluster.wait_acked(acked_before + 20)
                stop.set()
            await final_write(cluster, peers)
            for node in nodes:
                await cluster.stop(node)
    finally:
        await cluster.kill_leftovers()

    assert cluster.kills == 9 + 3
    stored = {n.name: read_back(n, cluster.group_id) for n in nodes}
    assert all(s.log_start == 1 and s.snapshot is None for s in stored.values())
    check_no_loss(cluster, {name: s.history for name, s in stored.items()})


def check_no_loss(cluster: Cluster, logs: dict[str, list[bytes]]) -> None:
    """Every acknowledged write in every replica's committed history, once, in order; the
    histories (so the states) identical."""
    acked = [p for _, p in cluster.acked]
    assert len(acked) > 50, f"too few acknowledged writes ({len(acked)}) to mean anything"
    for name, log in logs.items():
        where = {p: i for i, p in enumerate(log)}
        # Nothing applied twice, nothing that was never sent.
        assert len(where) == len(log), f"{name}: duplicate entries in the committed log"
        assert set(log) <= cluster.attempted, f"{name}: unknown entries"
        missing = [p for p in acked if p not in where]
        assert not missing, f"{name} lost {len(missing)} acknowledged writes: {missing[:5]}"
        # Each writer's acknowledged writes in the order they were acknowledged.
        for wid in {w for w, _ in cluster.acked}:
            positions = [where[p] for w, p in cluster.acked if w == wid]
            assert positions == sorted(positions), f"{name}: writer {wid} out of order"
    first, *others = logs.values()
    for other in others:
        assert other == first, "replicas disagree on the committed log"
    states = []
    for log in logs.values():
        sm = KVStateMachine()
        for i, payload in enumerate(log, start=1):
            sm.commit(i, payload)
        states.append(sm.data)
    assert states[0] == states[1] == states[2]


async def wait_applied_everywhere(cluster: Cluster, peers: dict[str, str]) -> None:
    """Until every node applied the leader's commit index (the nodes are other processes:
    their Admin/Status is polled until the condition holds)."""
    async with ExternalClient(peers, request_timeout=2.0) as client:
        with trio.fail_after(15):
            while True:
                groups: list[GroupStatus] = []
                for node in cluster.nodes:
                    try:
                        groups += (await client.status(node.uuid, (cluster.group_id,))).groups
                    except RaftError:
                        break
                leaders = [g for g in groups if g.is_leader]
                if len(groups) == len(cluster.nodes) and len(leaders) == 1 and all(
                    g.applied_index >= leaders[0].commit_index for g in groups
                ):
                    return
                await trio.sleep(0.05)


async def final_write(cluster: Cluster, peers: dict[str, str]) -> None:
    """A last acknowledged write, then wait until every node has applied the leader's commit
    index (so the read-back sees what the followers were told was committed)."""
    async with RaftClient(peers, cluster.group_id, GROUP_TYPE) as client:
        with trio.fail_after(15):
            while True:
                try:
                    await client.append([b"set final 1"], timeout=2.0)
                    break
                except RaftError:
                    await trio.sleep(0.1)  # retry back-off
    cluster.acked.append((-1, b"set final 1"))
    cluster.attempted.add(b"set final 1")
    await wait_applied_everywhere(cluster, peers)


async def test_kill9_with_snapshots_restarts_from_them(tmp_path: Path) -> None:
    """Snapshots every 20 entries and 5 entries kept behind them: the logs are compacted, so
    after a kill -9 a node can only rebuild its state machine from the snapshot its store
    persisted.  The leader is killed, then every node at once."""
    nodes = three_nodes(tmp_path)
    cluster = Cluster(nodes, str(uuid.uuid4()),
                      extra_args=["--snapshot-distance", "20", "--reserved-log-items", "5"])
    peers = {n.uuid: n.address for n in nodes}
    stop = trio.Event()
    try:
        with trio.fail_after(100):
            await cluster.bootstrap(nodes)
            async with trio.open_nursery() as nursery:
                for wid in range(3):
                    nursery.start_soon(writer, cluster, wid, peers, stop)
                await cluster.wait_acked(60)  # three snapshot distances
                acked_before = len(cluster.acked)
                victim = next((n for n in nodes if n.uuid == cluster.last_leader), nodes[0])
                await cluster.kill(victim)
                await cluster.start(victim)
                await cluster.wait_ready(victim)
                await cluster.wait_acked(acked_before + 40)
                acked_before = len(cluster.acked)
                await cluster.kill_everyone(nodes)
                # Progress needs two nodes that restored their state from their snapshots.
                await cluster.wait_acked(acked_before + 40)
                stop.set()
            await final_write(cluster, peers)
            for node in nodes:
                await cluster.stop(node)
    finally:
        await cluster.kill_leftovers()

    assert cluster.kills == 1 + 3
    for node in nodes:  # every node restarted at least once from its own snapshot
        assert "restored snapshot" in node.log_path.read_text(errors="replace"), node.name
    stored = {n.name: read_back(n, cluster.group_id) for n in nodes}
    for name, s in stored.items():
        assert s.snapshot is not None and s.log_start > 1, f"{name}: log never compacted"
    check_no_loss(cluster, {name: s.history for name, s in stored.items()})
