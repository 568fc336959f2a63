"""The chaos rig: real node processes, real network faults, a recorded history, checks.

:func:`run` starts ``nodes`` processes (``python -m nuraft_mesg server``, the durable SQLite
store on a small tmpfs per node), each in its own network namespace (:mod:`.net`), hosting
``groups`` groups (their first leaders spread over the nodes); ``clients`` clients write and
read (:meth:`~nuraft_mesg.client.ExternalClient.read`) a few *loaded* groups through random
nodes while a nemesis injects one fault at a time, chosen from a seeded RNG, and heals
it.  The other groups stay quiet -- faults hit them through the shared per-peer streams, and
the ``leave`` nemesis stops the group of a quiet group's leader on a node that stays up.

At the end everything is healed, every group must commit a write within
:attr:`RigConfig.liveness_bound` seconds, the replicas must converge, the nodes are stopped and
their stores read back, and :mod:`.checks` judges the history and the replicas.  A failing run
keeps its directory (history, seed, node logs) and says how to replay it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

import nuraft_mesg.testing.chaos.checks as checks
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import RaftError
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing.chaos.history import History, Kind, Op, Type
from nuraft_mesg.testing.chaos.net import NODE_PORT, Net, NetUnavailable, probe
from nuraft_mesg.testing.chaos.proxy import DelayProxy

__all__ = ["NEMESES", "Report", "RigConfig", "run"]

NEMESES: tuple[str, ...] = (
    "partition-halves", "partition-isolate", "partition-bridge", "partition-oneway",
    "loss", "delay", "duplicate", "pause", "kill", "clock", "disk-full", "leave",
)
NETWORK_NEMESES = frozenset(n for n in NEMESES if n.startswith("partition-")) | {
    "loss", "delay", "duplicate"}
SITE_DIR = Path(__file__).with_name("_site")
GROUP_TYPE = "kv"


@dataclass
class RigConfig:
    nodes: int = 3
    seconds: float = 120.0
    seed: int = 1
    groups: int = 20
    loaded_groups: int = 3
    clients: int = 4
    keys: int = 6
    nemeses: tuple[str, ...] = NEMESES
    heartbeat_ms: int = 100
    election_ms: tuple[int, int] = (500, 1000)
    hold: tuple[float, float] = (2.0, 6.0)
    """How long a fault lasts (seconds, uniform)."""
    rest: tuple[float, float] = (1.0, 3.0)
    """The calm between two faults."""
    leave_bound: float = 15.0
    """A quiet group whose leader's group stopped must have a new leader this soon."""
    liveness_bound: float = 30.0
    """After the final heal every group commits a write this soon."""
    tmpfs_mb: int = 48
    out_dir: Path | None = None
    keep: bool = False
    python: str = sys.executable
    log: Callable[[str], None] = field(default=lambda s: print(s, flush=True))


@dataclass
class Fault:
    kind: str
    start: float
    end: float = math.inf
    detail: str = ""


@dataclass
class Node:
    index: int
    uuid: str
    host: str
    port: int
    data_dir: Path
    ctl_dir: Path
    log_path: Path
    prefix: list[str]
    creates: list[str]
    proc: trio.Process | None = None
    starts: int = 0
    paused: bool = False
    clock_offset: float = 0.0
    tmpfs: bool = False
    cmds: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ready_file(self) -> Path:
        return self.ctl_dir / "ready"

    @property
    def name(self) -> str:
        return f"n{self.index}"


@dataclass
class Report:
    config: RigConfig
    directory: Path
    faults: list[Fault]
    ops: list[Op]
    violations: list[str]
    notes: list[str]
    seconds: float
    unavailability: dict[str, float]

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self) -> str:
        counts = Counter(f.kind for f in self.faults)
        kinds = Counter(op.type or "info" for op in self.ops)
        lines = [f"chaos: {self.config.nodes} nodes, {self.config.groups} groups "
                 f"({self.config.loaded_groups} loaded), seed {self.config.seed}, "
                 f"{self.seconds:.0f} s",
                 f"{'fault':<20}{'injected':>9}{'longest unavailability (s)':>28}"]
        for kind in NEMESES:
            if counts.get(kind):
                lines.append(f"{kind:<20}{counts[kind]:>9}"
                             f"{self.unavailability.get(kind, 0.0):>28.2f}")
        lines.append(f"{'(no fault)':<20}{'':>9}"
                     f"{self.unavailability.get('(no fault)', 0.0):>28.2f}")
        by_kind = Counter((op.kind, op.type or "info") for op in self.ops)
        lines.append(f"operations: {kinds.get('ok', 0)} ok, {kinds.get('fail', 0)} failed, "
                     f"{kinds.get('info', 0)} unknown ("
                     + ", ".join(f"{k} {t} {n}" for (k, t), n in sorted(by_kind.items()))
                     + ")")
        lines.append(f"violations: {len(self.violations)}")
        lines += [f"  - {v}" for v in self.violations[:50]]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class Rig:
    def __init__(self, cfg: RigConfig, directory: Path) -> None:
        self.cfg = cfg
        self.dir = directory
        self.rng = random.Random(cfg.seed)
        self.violations: list[str] = []
        self.notes: list[str] = []
        self.faults: list[Fault] = []
        self.leaders: dict[tuple[str, int], set[str]] = defaultdict(set)
        self.latest: dict[str, tuple[int, str]] = {}
        """group -> (term, leader uuid) from the latest status polls."""
        self.left: dict[str, str] = {}
        """group -> the node whose group was stopped by the ``leave`` nemesis (not re-added)."""
        self.probes: dict[str, set[bytes]] = defaultdict(set)
        self.proxies: dict[tuple[int, int], DelayProxy] = {}
        self.start_time = 0.0
        self.net: Net | None = None
        tag = f"{os.getpid() % 0xFFFF:04x}"
        self.groups = [str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
                       for _ in range(cfg.groups)]
        self.loaded = self.groups[: cfg.loaded_groups]
        why = probe() or ("NURAFT_CHAOS_LOOPBACK is set" if os.environ.get(
            "NURAFT_CHAOS_LOOPBACK") else "")
        if not why:
            self.net = Net(cfg.nodes, tag, subnet=(77, os.getpid() % 200 + 20))
        else:
            self.notes.append(f"loopback only ({why}): network and disk faults disabled")
        self.nodes: list[Node] = []
        for i in range(cfg.nodes):
            host = self.net.ip(i) if self.net else "127.0.0.1"
            port = NODE_PORT if self.net else _free_port()
            self.nodes.append(Node(
                i, str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4)), host, port,
                directory / f"n{i}" / "data", directory / f"n{i}" / "ctl",
                directory / f"n{i}.log", self.net.exec_prefix(i) if self.net else [],
                [g for j, g in enumerate(self.groups) if j % cfg.nodes == i]))
        self.peers = {n.uuid: n.address for n in self.nodes}
        self.history = History(directory / "history.jsonl")

    def now(self) -> float:
        return trio.current_time() - self.start_time

    def violation(self, text: str) -> None:
        self.cfg.log(f"chaos: VIOLATION {text}")
        self.violations.append(text)

    # -- nodes ---------------------------------------------------------------------------------
    def command(self, node: Node, *, create: bool) -> list[str]:
        cmd = [*node.prefix, self.cfg.python, "-m", "nuraft_mesg", "-v", "server",
               "--uuid", node.uuid, "--host", node.host, "--port", str(node.port),
               "--data-dir", str(node.data_dir), "--group-type", GROUP_TYPE,
               "--heartbeat-ms", str(self.cfg.heartbeat_ms), "--election-ms",
               *(str(x) for x in self.cfg.election_ms), "--ready-file", str(node.ready_file)]
        for other in self.nodes:
            if other is not node:
                cmd += ["--peer", f"{other.uuid}={other.address}"]
        if create:
            for gid in node.creates:
                cmd += ["--create-group", gid]
        return cmd

    async def start(self, node: Node, *, create: bool = False) -> None:
        assert node.proc is None
        node.ready_file.unlink(missing_ok=True)
        node.starts += 1
        env = dict(os.environ, NURAFT_CHAOS_CONTROL=str(node.ctl_dir),
                   PYTHONPATH=os.pathsep.join(
                       [str(SITE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]))
        with open(node.log_path, "ab") as out:  # noqa: ASYNC230 - a local log file
            out.write(f"\n==== start {node.starts} at {self.now():.3f} ====\n".encode())
            out.flush()
            node.proc = await trio.lowlevel.open_process(
                self.command(node, create=create), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env)
        node.paused = False

    async def wait_ready(self, node: Node, within: float) -> bool:
        """Until the node wrote its ready file (polled: no event crosses processes)."""
        with trio.move_on_after(within):
            while not node.ready_file.exists():
                if node.proc is None or node.proc.poll() is not None:
                    return False
                await trio.sleep(0.1)
            return True
        return False

    async def kill(self, node: Node) -> None:
        if node.proc is None:
            return
        node.proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await node.proc.wait()
        node.proc = None
        node.paused = False

    def kill_now(self, node: Node) -> None:
        """Synchronous kill for the clean-up path."""
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(node.proc.pid, 0)

    def mount_tmpfs(self, node: Node) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.ctl_dir.mkdir(parents=True, exist_ok=True)
        if self.net is None:
            return
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.cfg.tmpfs_mb}m",
                        "nmchaos", str(node.data_dir)], check=True)
        node.tmpfs = True

    def umount(self, node: Node) -> None:
        if node.tmpfs:
            subprocess.run(["umount", "-l", str(node.data_dir)], check=False)
            node.tmpfs = False

    # -- status polling ------------------------------------------------------------------------
    async def poller(self) -> None:
        async with ExternalClient(self.peers, request_timeout=1.0, retry_timeout=1.0) as client:
            while True:
                async with trio.open_nursery() as nursery:
                    for node in self.nodes:
                        nursery.start_soon(self.poll_one, client, node)
                await trio.sleep(0.5)

    async def poll_one(self, client: ExternalClient, node: Node) -> None:
        if node.proc is None or node.paused:
            return
        try:
            status = await client.status(node.uuid)
        except RaftError:
            return
        for g in status.groups:
            if g.is_leader:
                self.leaders[(g.group_id, g.term)].add(node.uuid)
                known = self.latest.get(g.group_id)
                if known is None or known[0] <= g.term:
                    self.latest[g.group_id] = (g.term, node.uuid)

    # -- workload ------------------------------------------------------------------------------
    async def client_loop(self, cid: int, rng: random.Random) -> None:
        async with ExternalClient(self.peers, request_timeout=2.0, retry_timeout=2.0) as client:
            seq = 0
            while True:
                gid = rng.choice(self.loaded)
                key = f"{gid}/k{rng.randrange(self.cfg.keys)}"
                roll = rng.random()
                dest = rng.choice(self.nodes).uuid
                if roll < 0.25:
                    await self.one_read(client, cid, gid, key, dest)
                else:
                    seq += 1
                    kind: Kind = "del" if roll > 0.92 else "put"
                    value = f"c{cid}.{seq}" if kind == "put" else None
                    op = self.history.invoke(cid, kind, key, value, self.now())
                    outcome: Type = "info"
                    with trio.move_on_after(5.0):
                        try:
                            await client.append_entries(gid, [checks.encode(op)], dest)
                            outcome = "ok"
                        except RaftError:
                            pass
                    self.history.complete(op, outcome, self.now())
                await trio.sleep(rng.uniform(0.01, 0.08))

    async def one_read(self, client: ExternalClient, cid: int, gid: str, key: str,
                       dest: str) -> None:
        op = self.history.invoke(cid, "get", key, None, self.now())
        outcome: Type = "info"
        value: str | None = None
        with trio.move_on_after(5.0):
            try:
                raw = await client.read(gid, KVStateMachine.get_query(key.split("/", 1)[1]),
                                        dest)
                value = KVStateMachine.decode_get(raw)
                outcome = "ok"
            except RaftError:
                pass
        self.history.complete(op, outcome, self.now(), value)

    # -- nemeses -------------------------------------------------------------------------------
    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None]

    async def nemesis(self) -> None:
        kinds = [k for k in self.cfg.nemeses
                 if self.net is not None or k not in NETWORK_NEMESES | {"disk-full"}]
        if not kinds:
            return
        order: list[str] = []
        while True:
            await trio.sleep(self.rng.uniform(*self.cfg.rest))
            if not order:  # every kind once per round, shuffled
                order = list(kinds)
                self.rng.shuffle(order)
            kind = order.pop()
            hold = self.rng.uniform(*self.cfg.hold)
            fault = Fault(kind, self.now())
            self.faults.append(fault)
            try:
                await getattr(self, "nemesis_" + kind.replace("-", "_"))(fault, hold)
            finally:
                with trio.CancelScope(shield=True):
                    await self.heal_all()
                fault.end = self.now()
            self.cfg.log(f"chaos: {fault.start:7.1f}s {kind:<18} {fault.detail} "
                         f"(healed at {fault.end:.1f}s)")

    def _split(self) -> tuple[list[int], list[int]]:
        ids = list(range(self.cfg.nodes))
        self.rng.shuffle(ids)
        k = self.cfg.nodes // 2
        return ids[:k], ids[k:]

    def _cut(self, a: Sequence[int], b: Sequence[int]) -> None:
        assert self.net is not None
        self.net.block([(x, y) for x in a for y in b] + [(y, x) for x in a for y in b])

    async def nemesis_partition_halves(self, fault: Fault, hold: float) -> None:
        minority, majority = self._split()
        fault.detail = f"{minority} | {majority}"
        self._cut(minority, majority)
        await trio.sleep(hold)

    async def nemesis_partition_isolate(self, fault: Fault, hold: float) -> None:
        i = self.rng.randrange(self.cfg.nodes)
        rest = [j for j in range(self.cfg.nodes) if j != i]
        fault.detail = f"[{i}] | {rest}"
        self._cut([i], rest)
        await trio.sleep(hold)

    async def nemesis_partition_bridge(self, fault: Fault, hold: float) -> None:
        assert self.net is not None
        ids = list(range(self.cfg.nodes))
        self.rng.shuffle(ids)
        if self.cfg.nodes >= 5:  # majorities ring: each node sees its two ring neighbours
            pairs = [(ids[a], ids[b]) for a in range(len(ids)) for b in range(len(ids))
                     if a != b and (a - b) % len(ids) not in (1, len(ids) - 1)]
            fault.detail = f"ring {ids}"
            self.net.block(pairs)
        else:  # a bridge node sees both halves, which do not see each other
            bridge, rest = ids[0], ids[1:]
            half = len(rest) // 2
            fault.detail = f"{rest[:half]} -[{bridge}]- {rest[half:]}"
            self._cut(rest[:half], rest[half:])
        await trio.sleep(hold)

    async def nemesis_partition_oneway(self, fault: Fault, hold: float) -> None:
        assert self.net is not None
        i = self.rng.randrange(self.cfg.nodes)
        rest = [j for j in range(self.cfg.nodes) if j != i]
        if self.rng.random() < 0.5:
            fault.detail = f"{i} cannot send to {rest}"
            self.net.block([(i, j) for j in rest])
        else:
            fault.detail = f"{i} cannot receive from {rest}"
            self.net.block([(j, i) for j in rest])
        await trio.sleep(hold)

    async def nemesis_loss(self, fault: Fault, hold: float) -> None:
        assert self.net is not None
        p = self.rng.uniform(0.05, 0.30)
        nodes = (list(range(self.cfg.nodes)) if self.rng.random() < 0.5
                 else [self.rng.randrange(self.cfg.nodes)])
        fault.detail = f"{p:.0%} on {nodes}"
        self.net.loss(nodes, p)
        await trio.sleep(hold)

    async def nemesis_duplicate(self, fault: Fault, hold: float) -> None:
        assert self.net is not None
        p = self.rng.uniform(0.05, 0.30)
        fault.detail = f"{p:.0%} on every node"
        self.net.duplicate(range(self.cfg.nodes), p)
        await trio.sleep(hold)

    async def nemesis_delay(self, fault: Fault, hold: float) -> None:
        assert self.net is not None
        delay = self.rng.uniform(0.05, 0.5)
        jitter = self.rng.uniform(0.0, delay / 2)
        if self.net.netem:
            fault.detail = f"netem {delay * 1000:.0f}±{jitter * 1000:.0f} ms, reorder 10%"
            self.net.netem_delay(range(self.cfg.nodes), int(delay * 1000), int(jitter * 1000),
                                 10)
        else:
            fault.detail = f"proxied {delay * 1000:.0f}±{jitter * 1000:.0f} ms"
            for proxy in self.proxies.values():
                proxy.delay, proxy.jitter = delay, jitter
            self.net.route_through_proxies(self.proxies)
        await trio.sleep(hold)

    async def nemesis_pause(self, fault: Fault, hold: float) -> None:
        node = self.rng.choice(self.live())
        hold = self.rng.uniform(2.0, 4.0) * self.cfg.election_ms[1] / 1000
        fault.detail = f"SIGSTOP {node.name} for {hold:.1f}s"
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        node.paused = True
        await trio.sleep(hold)

    async def nemesis_kill(self, fault: Fault, hold: float) -> None:
        """kill -9 one node (half the time), a majority or every node at once (what an
        acknowledgement before the store has the write cannot survive)."""
        live = self.live()
        roll = self.rng.random()
        count = 1 if roll < 0.5 else len(live) // 2 + 1 if roll < 0.75 else len(live)
        victims = self.rng.sample(live, min(count, len(live)))
        fault.detail = f"kill -9 {[n.name for n in victims]}, down {hold:.1f}s"
        for node in victims:
            await self.kill(node)
        await trio.sleep(hold)

    async def nemesis_clock(self, fault: Fault, hold: float) -> None:
        node = self.rng.choice(self.live())
        jump = self.rng.uniform(2.0, 10.0)
        node.clock_offset += jump
        fault.detail = f"{node.name}'s clock +{jump:.1f}s"
        tmp = node.ctl_dir / "clock.tmp"
        tmp.write_text(repr(node.clock_offset))
        tmp.replace(node.ctl_dir / "clock")
        await trio.sleep(hold)

    async def nemesis_disk_full(self, fault: Fault, hold: float) -> None:
        node = self.rng.choice(self.live())
        fault.detail = f"{node.name}'s data disk full for {hold:.1f}s"
        filler = node.data_dir / "filler"
        st = os.statvfs(node.data_dir)
        with contextlib.suppress(OSError), open(filler, "wb") as f:  # noqa: ASYNC230
            with contextlib.suppress(OSError):
                os.posix_fallocate(f.fileno(), 0, max(1, st.f_bavail * st.f_frsize))
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        await trio.sleep(hold)
        if node.proc is not None and node.proc.poll() is not None:
            self.violation(f"{node.name} exited ({node.proc.returncode}) on a full disk "
                           "instead of stopping its groups")
        filler.unlink(missing_ok=True)
        await self.kill(node)  # its groups stopped by the error: a restart rejoins them

    async def nemesis_leave(self, fault: Fault, hold: float) -> None:
        quiet = [g for g in self.groups if g not in self.loaded and g not in self.left
                 and g in self.latest]
        if not quiet:
            fault.detail = "no quiet group with a known leader"
            return
        gid = self.rng.choice(quiet)
        term, leader = self.latest[gid]
        node = next(n for n in self.nodes if n.uuid == leader)
        if node.proc is None:
            fault.detail = "skipped: the leader is down"
            return
        fault.detail = f"group {gid[:8]} stopped on its leader {node.name} (term {term})"
        node.cmds += 1
        cmd = node.ctl_dir / f"cmd-{node.cmds:04d}"
        cmd.write_text(f"leave {gid}\n")
        done = cmd.with_name(cmd.name + ".done")
        with trio.move_on_after(10):
            for _ in iter(done.exists, True):  # polled: no event crosses processes
                await trio.sleep(0.05)
        outcome = done.read_text() if done.exists() else "no answer"
        if outcome != "ok":
            self.notes.append(f"leave {gid[:8]} on {node.name}: {outcome}")
            return
        self.left[gid] = node.uuid
        started = trio.current_time()
        elected = False
        with trio.move_on_after(self.cfg.leave_bound):
            while True:
                now = self.latest.get(gid)
                if now is not None and now[0] > term and now[1] != node.uuid:
                    elected = True
                    break
                await trio.sleep(0.1)
        took = trio.current_time() - started
        if not elected:
            self.violation(f"liveness: quiet group {gid[:8]} elected no leader within "
                           f"{self.cfg.leave_bound:.0f}s after its leader's group stopped on "
                           f"{node.name} (the node stayed up)")
        fault.detail += f"; new leader after {took:.1f}s" if elected else "; NO new leader"
        await self.readd(gid, node)

    async def readd(self, gid: str, node: Node) -> None:
        """Put ``node`` back into ``gid`` (removed, then added: it left with its state)."""
        others = [n.uuid for n in self.nodes if n is not node]
        async with ExternalClient(self.peers, request_timeout=2.0, retry_timeout=5.0) as c:
            # A write wakes the group if no leader was noticed (the liveness hole).
            with trio.move_on_after(30):
                while True:
                    try:
                        probe = f"set __readd {node.uuid[:8]}.{node.cmds}".encode()
                        self.probes[gid].add(probe)
                        await c.append_entry(gid, probe, self.rng.choice(others))
                        await c.rem_server(gid, node.uuid, self.rng.choice(others))
                        break
                    except RaftError:
                        await trio.sleep(0.3)
            with trio.move_on_after(30):
                while True:
                    try:
                        await c.add_server(gid, node.uuid, self.rng.choice(others),
                                           priority=100)
                        del self.left[gid]
                        return
                    except RaftError:
                        await trio.sleep(0.3)
        self.notes.append(f"could not re-add {node.name} to {gid[:8]}")

    async def heal_all(self) -> None:
        if self.net is not None:
            self.net.heal()
        for proxy in self.proxies.values():
            proxy.cut()
        for node in self.nodes:
            if node.paused and node.proc is not None:
                node.proc.send_signal(signal.SIGCONT)
                node.paused = False
            with contextlib.suppress(FileNotFoundError):
                (node.data_dir / "filler").unlink()
            if node.proc is None:
                await self.start(node)
        for node in self.nodes:
            if not await self.wait_ready(node, 60):
                self.violation(f"{node.name} did not come back within 60 s: see {node.log_path}")
                if node.proc is not None and node.proc.poll() is not None:
                    node.proc = None

    # -- the end -------------------------------------------------------------------------------
    async def final_liveness(self) -> None:
        """Every group commits a write within the bound (leaders must exist after a heal)."""
        healed = trio.current_time()
        slow: list[str] = []
        worst = 0.0

        async def one(client: ExternalClient, gid: str) -> None:
            nonlocal worst
            probe = f"set __final {gid[:8]}".encode()
            self.probes[gid].add(probe)
            hosts = [n.uuid for n in self.nodes if self.left.get(gid) != n.uuid]
            with trio.move_on_after(self.cfg.liveness_bound):
                while True:
                    try:
                        await client.append_entry(gid, probe, self.rng.choice(hosts))
                        worst = max(worst, trio.current_time() - healed)
                        return
                    except RaftError:
                        await trio.sleep(0.2)
            slow.append(gid[:8])

        async with (ExternalClient(self.peers, request_timeout=3.0, retry_timeout=3.0) as c,
                    trio.open_nursery() as nursery):
            for gid in self.groups:
                nursery.start_soon(one, c, gid)
        if slow:
            self.violation(f"liveness: {len(slow)} group(s) committed no write within "
                           f"{self.cfg.liveness_bound:.0f}s of the final heal: {slow[:10]}")
        self.notes.append(f"after the final heal every group committed a write within "
                          f"{worst:.1f}s" if not slow else "final liveness failed")

    async def converge(self) -> None:
        async with ExternalClient(self.peers, request_timeout=2.0, retry_timeout=2.0) as c:
            with trio.move_on_after(30):
                while True:
                    applied: dict[str, set[int]] = defaultdict(set)
                    for node in self.nodes:
                        with contextlib.suppress(RaftError):
                            for g in (await c.status(node.uuid)).groups:
                                applied[g.group_id].add(g.applied_index)
                    if all(len(applied.get(g, ())) == 1 for g in self.groups):
                        return
                    await trio.sleep(0.3)
        self.notes.append("replicas did not report equal applied indexes within 30 s")

    async def stop_all(self) -> None:
        for node in self.nodes:
            if node.proc is None:
                continue
            node.proc.send_signal(signal.SIGTERM)
            code: int | None = None
            with trio.move_on_after(20):
                code = await node.proc.wait()
            if code is None:
                self.violation(f"{node.name} did not stop within 20 s of SIGTERM")
                await self.kill(node)
            elif code != 0:
                self.violation(f"{node.name} exited with {code} on SIGTERM")
            node.proc = None

    def judge(self) -> None:
        replicas: dict[str, list[checks.Replica]] = defaultdict(list)
        for node in self.nodes:
            try:
                stored = checks.read_replicas(node.data_dir, node.name)
            except Exception as exc:  # a store that cannot be read back is a finding
                self.violation(f"{node.name}: store unreadable: {exc!r}")
                continue
            for gid in self.groups:
                if gid in stored:
                    replicas[gid].append(stored[gid])
                elif self.left.get(gid) != node.uuid:
                    self.violation(f"group {gid[:8]} missing from {node.name}'s store")
        ops = self.history.ops
        for v in checks.check_replicas(ops, replicas, self.probes):
            self.violation(v)
        for v in checks.check_real_time(ops, replicas):
            self.violation(v)
        for v in checks.check_election_safety(self.leaders):
            self.violation(v)
        self.history.close()
        lin, verdict = checks.check_linearizability(self.history.path)
        self.notes.append(verdict)
        for v in lin:
            self.violation(v)

    def unavailability(self) -> dict[str, float]:
        """Per fault kind, the longest gap between two acknowledged operations of one loaded
        group that overlaps a fault of that kind (or no fault)."""
        out: dict[str, float] = defaultdict(float)
        times: dict[str, list[float]] = defaultdict(list)
        for op in self.history.ops:
            if op.type == "ok":
                times[op.group].append(op.completed)
        windows = [(f.start, f.end, f.kind) for f in self.faults]
        for ts in times.values():
            ts.sort()
            for a, b in itertools.pairwise(ts):
                gap = b - a
                hit = [k for s, e, k in windows if a < e and b > s]
                for k in hit or ["(no fault)"]:
                    out[k] = max(out[k], gap)
        return dict(out)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(rig: Rig) -> None:
    cfg = rig.cfg
    rig.start_time = trio.current_time()
    async with trio.open_nursery() as nursery:
        if rig.net is not None:
            for a in range(cfg.nodes):
                for b in range(cfg.nodes):
                    if a != b:
                        proxy = DelayProxy(rig.net.gateway, rig.net.proxy_port(a, b),
                                           rig.net.ip(b), NODE_PORT, random.Random(a * 31 + b))
                        rig.proxies[(a, b)] = proxy
                        await nursery.start(proxy.serve)
        for node in rig.nodes:
            await rig.start(node, create=True)
        for node in rig.nodes:
            if not await rig.wait_ready(node, 180):
                raise RuntimeError(f"{node.name} did not start: see {node.log_path}")
        cfg.log(f"chaos: {cfg.nodes} nodes up with {cfg.groups} groups after "
                f"{rig.now():.1f}s; running for {cfg.seconds:.0f}s")
        rig.start_time = trio.current_time()
        nursery.start_soon(rig.poller)
        async with trio.open_nursery() as work:
            for cid in range(cfg.clients):
                work.start_soon(rig.client_loop, cid, random.Random(cfg.seed * 1000 + cid))
            work.start_soon(rig.nemesis)
            await trio.sleep(cfg.seconds)
            work.cancel_scope.cancel()
        await rig.heal_all()
        cfg.log(f"chaos: healed at {rig.now():.1f}s; checking liveness and convergence")
        await rig.final_liveness()
        await rig.converge()
        await trio.sleep(1.0)  # a last status poll sees the final leaders
        nursery.cancel_scope.cancel()
    await rig.stop_all()


def run(cfg: RigConfig) -> Report:
    """One run (blocking: it calls ``trio.run``); always cleans up after itself."""
    directory = cfg.out_dir or Path(tempfile.mkdtemp(prefix=f"nuraft-chaos-{cfg.seed}-"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "seed").write_text(f"{cfg.seed}\n")
    rig = Rig(cfg, directory)
    started = time.monotonic()
    try:
        if rig.net is not None:
            rig.net.setup()
            if rig.net.netem:
                rig.notes.append("tc netem present: delay with jitter and reordering via netem")
            else:
                rig.notes.append("no tc netem in this kernel: delay via per-link proxies; "
                                 "no reordering fault")
        for node in rig.nodes:
            rig.mount_tmpfs(node)
        trio.run(_run, rig)
        rig.judge()
    except NetUnavailable:
        raise
    except BaseException as exc:
        rig.violations.append(f"the rig failed: {exc!r}")
        if not isinstance(exc, Exception):
            raise
    finally:
        for node in rig.nodes:
            rig.kill_now(node)
        rig.history.close()
        for node in rig.nodes:
            with contextlib.suppress(OSError):
                if node.tmpfs:
                    shutil.copytree(node.data_dir, directory / f"n{node.index}" / "store",
                                    ignore=shutil.ignore_patterns("filler"), dirs_exist_ok=True)
            rig.umount(node)
        if rig.net is not None:
            rig.net.teardown()
    report = Report(cfg, directory, rig.faults, rig.history.ops, rig.violations, rig.notes,
                    time.monotonic() - started, rig.unavailability())
    (directory / "summary.txt").write_text(report.table() + "\n")
    (directory / "faults.json").write_text(json.dumps(
        [f.__dict__ for f in rig.faults], default=str, indent=1))
    if report.ok and not cfg.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return report
