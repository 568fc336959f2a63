#!/usr/bin/env python3
"""nuraft_mesg benchmarks (issue F): one command, every workload, a table, JSON and a plot.

::

    python3 tools/dev.py bench [--quick] [--only 1,4] [--out DIR] [--no-profile]

(or ``.venv/bin/python benchmarks/run.py ...`` once the ``bench`` extra is installed).

Workloads (each node is its own process, ``benchmarks/node.py``, a Manager on 127.0.0.1;
docs/benchmarks.md explains each in detail):

1. One group, 3 nodes, 100-byte entries, N concurrent proposers inside the leader's process
   (``Manager.append_entries``), for a sweep of N: commits/s, p50/p99 commit latency.  A
   py-spy (or cProfile) profile of the leader and a follower is taken at the best N.
2. The same with 100 groups (leaders spread over the 3 nodes): aggregate commits/s.
3. Idle cost: CPU % per node process (``/proc/<pid>/stat``, utime + stime over a fixed
   window) with 1,000 and with 10,000 idle 3-member groups.
4. Failover: SIGKILL the leader (durable SQLite store) 20 times; from the kill to the first
   write that commits (an ExternalClient loop), p50/p99; the killed node is restarted.
5. Creating and electing 10,000 3-member groups: wall time (capped; partial result recorded).
6. PySyncObj on workload 1 (``benchmarks/pysyncobj_bench.py``), same sweep, and the ratio;
   then 3 alternations A B of both at each one's best N (best, median, both ratios, CPU µs
   per committed entry of the leader and each follower, for both libraries).
7. Reads (docs/reads.md): one group, 3 nodes with lease reads on; for each proposer count of
   the sweep, writes (as workload 1), then linearizable, lease and follower (linearizable, on
   a follower) reads by as many concurrent readers (``Manager.read``): reads/s, p50/p99, and
   linearizable reads per write.
8. Overload: 4 x workload 1's best N on one group, with admission control bounding the
   group's pending writes at that N (refusals counted) and without; leader changes, p99.
9. Workload 1 at its best N on the durable SQLite store: commits/s, CPU µs per entry.

The full run writes ``<out>/benchmarks.json`` and ``<out>/benchmarks.png`` (``--out``
defaults to docs/ for a full run and to a temporary directory for ``--quick``) and, when
``<out>`` is docs/, refreshes the results block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from benchlib import (  # noqa: E402
    DEFAULT_GC,
    GC_ENV,
    Histogram,
    NodeError,
    NodeProcess,
    Window,
    cpu_us_per_commit,
    exact_percentile,
    free_port,
    proc_rss_mb,
)

PY = sys.executable
NODE = str(HERE / "node.py")
ENTRY_SIZE = 100
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"


# =============================================================================================
# Settings
# =============================================================================================
@dataclass
class Settings:
    quick: bool
    sweep: list[int]
    load_seconds: float
    warmup: float
    w2_groups: int
    w2_proposers: list[int]
    idle_sizes: list[int]
    idle_window: float
    idle_settle: float
    create_cap: float
    create_concurrency: int
    kills: int
    profile_seconds: float
    rounds: int = 3
    """Alternations A B of the one-group comparison (workloads 1 and 6) at the best N."""
    heartbeat_ms: int = 0  # 0: RaftParams' defaults
    max_pending: int = 0  # 0: RaftParams' default max_pending_proposals
    election_ms: tuple[int, int] | None = None

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(quick=True, sweep=[256, 2048], load_seconds=2, warmup=1,
                       w2_groups=30, w2_proposers=[16], idle_sizes=[10, 200],
                       idle_window=3, idle_settle=1, create_cap=10, create_concurrency=32,
                       kills=3, profile_seconds=0, rounds=2)
        return cls(quick=False, sweep=[1, 16, 256, 1024, 4096, 16384], load_seconds=6, warmup=2,
                   w2_groups=100, w2_proposers=[32, 128], idle_sizes=[10, 1000, 10000],
                   idle_window=10, idle_settle=5, create_cap=60, create_concurrency=32,
                   kills=20, profile_seconds=8)


# =============================================================================================
# A cluster of node processes
# =============================================================================================
class BenchNode(NodeProcess):
    def __init__(self, name: str, log_dir: Path, settings: Settings,
                 data_dir: Path | None, *, lease_reads: bool = False) -> None:
        self.uuid = str(uuid.uuid4())
        self.port = free_port()
        argv = [PY, NODE, "--uuid", self.uuid, "--port", str(self.port)]
        if lease_reads:
            argv.append("--lease-reads")
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        if settings.heartbeat_ms:
            argv += ["--heartbeat-ms", str(settings.heartbeat_ms)]
        if settings.max_pending:
            argv += ["--max-pending", str(settings.max_pending)]
        if settings.election_ms:
            argv += ["--election-ms", *map(str, settings.election_ms)]
        if os.environ.get("BENCH_NODE_LOG_LEVEL"):
            argv += ["--log-level", os.environ["BENCH_NODE_LOG_LEVEL"]]
        super().__init__(name, argv, log_dir / f"{name}.log")


class Cluster:
    def __init__(self, label: str, log_dir: Path, settings: Settings, *, n: int = 3,
                 durable: bool = False, lease_reads: bool = False) -> None:
        self.label = label
        self.dir = log_dir / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            BenchNode(f"{label}-n{i + 1}", self.dir, settings,
                      self.dir / f"data-n{i + 1}" if durable else None,
                      lease_reads=lease_reads)
            for i in range(n)
        ]
        self.params: dict[str, Any] = {}

    @property
    def directory(self) -> dict[str, str]:
        return {n.uuid: f"127.0.0.1:{n.port}" for n in self.nodes}

    def __enter__(self) -> Cluster:
        try:
            for n in self.nodes:
                n.start_nowait()
            for n in self.nodes:
                ready = n.wait_ready(60)
                self.params = ready.get("params", {})
            for n in self.nodes:
                n.request({"op": "peers", "directory": self.directory})
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for n in self.nodes:
            try:
                n.stop()
            except Exception:
                n.kill9()

    def restart(self, node: BenchNode) -> None:
        node.start(60)
        node.request({"op": "peers", "directory": self.directory})

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    def all(self, cmds: list[tuple[BenchNode, dict[str, Any]]],
            timeout: float = 120) -> list[dict[str, Any]]:
        """Send every command first, then collect the answers (they run concurrently)."""
        for node, cmd in cmds:
            node.send(cmd)
        return [node.recv(timeout) for node, _ in cmds]

    def create_groups(self, count: int, *, cap: float, concurrency: int
                      ) -> dict[str, Any]:
        """Create ``count`` 3-member groups, node i leading every third one (all nodes at
        once), stopping at ``cap`` seconds; the elapsed time is the slowest node's."""
        gids = [str(uuid.uuid4()) for _ in range(count)]
        share = {n.uuid: gids[i::len(self.nodes)] for i, n in enumerate(self.nodes)}
        t0 = time.monotonic()
        replies = self.all([
            (n, {"op": "create", "groups": share[n.uuid],
                 "peers": [m.uuid for m in self.nodes if m is not n],
                 "concurrency": concurrency, "deadline_s": cap})
            for n in self.nodes
        ], timeout=cap + 120)
        wall = time.monotonic() - t0
        created = sum(r["created"] for r in replies)
        errors: Counter[str] = Counter()
        for r in replies:
            errors.update(r["errors"])
        done_at = sorted(t for r in replies for t in r["done_at"])
        return {"gids": gids, "requested": count, "created": created, "wall_s": wall,
                "elapsed_s": max(r["elapsed"] for r in replies),
                "timed_out": any(r["timed_out"] for r in replies),
                "errors": dict(errors), "done_at": done_at}

    def one_group(self) -> str:
        created = self.create_groups(1, cap=30, concurrency=1)
        if created["created"] != 1:
            raise RuntimeError(f"{self.label}: could not create a group: {created['errors']}")
        gid: str = created["gids"][0]
        return gid

    def wait_leader(self, gid: str, timeout: float) -> BenchNode | None:
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader(gid)
            if leader is not None or time.monotonic() > deadline:
                return leader
            time.sleep(0.1)

    def leader(self, gid: str) -> BenchNode | None:
        for n in self.nodes:
            if n.alive and n.request({"op": "leader", "group": gid}).get("is_leader"):
                return n
        return None

    def status(self) -> list[dict[str, Any]]:
        return self.all([(n, {"op": "status"}) for n in self.nodes], timeout=300)


# =============================================================================================
# Workloads
# =============================================================================================
def summarize_load(replies: list[dict[str, Any]], window: dict[str, Any]) -> dict[str, Any]:
    hist = Histogram.merged(Histogram.from_json(r["hist"]) for r in replies)
    commits = sum(r["commits"] for r in replies)
    seconds = max(r["seconds"] for r in replies)
    errors: Counter[str] = Counter()
    for r in replies:
        errors.update(r["errors"])
    rpcs = sum(r.get("rpcs_sent", 0) for r in replies)
    batches = sum(r.get("batches_sent", 0) for r in replies)
    return {
        "commits": commits,
        "commits_per_s": round(commits / seconds, 1),
        "p50_ms": _r(hist.percentile_ms(0.50)),
        "p99_ms": _r(hist.percentile_ms(0.99)),
        "mean_ms": _r(hist.mean_ms()),
        "errors": dict(errors),
        "leader_rpcs_per_s": round(rpcs / seconds, 1),
        "entries_per_append": round(2 * commits / rpcs, 1) if rpcs else None,
        "leader_batches_per_s": round(batches / seconds, 1),
        "messages_per_batch": round(rpcs / batches, 1) if batches else None,
        **window,
    }


def _r(x: float | None, nd: int = 2) -> float | None:
    return round(x, nd) if x is not None else None


def run_load(cluster: Cluster, nodes: list[BenchNode], gids: list[str], proposers: int,
             s: Settings, seconds: float | None = None, *, read: str | None = None,
             role: str = "leader", pipelined: bool = False) -> dict[str, Any]:
    seconds = seconds or s.load_seconds
    cmd: dict[str, Any] = {"op": "load", "groups": gids, "proposers": proposers,
                           "warmup_s": s.warmup, "seconds": seconds, "size": ENTRY_SIZE,
                           "read": read, "role": role, "pipelined": pipelined}
    for n in nodes:
        n.send(cmd)
    time.sleep(s.warmup)
    win = Window(cluster.pids)
    time.sleep(seconds)
    window = win.close()
    replies = [n.recv(seconds + 120) for n in nodes]
    return summarize_load(replies, window)


def workload0(s: Settings) -> dict[str, Any]:
    seconds = 1.0 if s.quick else 2.0
    proc = subprocess.run([PY, str(HERE / "transport_micro.py"), "--seconds", str(seconds)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"transport_micro.py failed: {proc.stderr.strip()[-500:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    for r in out["results"]:
        log(f"  w0 concurrency {r['concurrency']}: {r['calls_per_s']:.0f} calls/s, "
            f"{r['cpu_us_per_call']:.0f} us CPU per call, process CPU {r['cpu_pct']} %")
    for r in out.get("stream", []):
        log(f"  w0 stream batches of {r['batch']}: {r['msgs_per_s']:.0f} messages/s, "
            f"{r['cpu_us_per_msg']:.0f} us CPU per message")
    return out


def workload1_6(s: Settings, log_dir: Path, *, do1: bool, do6: bool, profile: bool
                ) -> dict[str, Any]:
    """Workloads 1 and 6, interleaved: for each proposer count, nuraft_mesg then PySyncObj, so
    that both see the same (shared) machine; the idle nuraft_mesg cluster (one group) stays up
    while PySyncObj runs.  Then the comparison: ``s.rounds`` alternations A B A B ... at each
    library's best N (the sweep's only N when it has one, and then no separate sweep), so
    that the machine's noise hits both; best and median of each, and their ratios."""
    w1: dict[str, Any] = {"sweep": [], "rounds": [], "rounds_pipelined": []}
    """``rounds``: one task per write (append_entries); ``rounds_pipelined``: one task with
    a window of as many writes (Manager.pipeline), PySyncObj's pattern."""
    w6: dict[str, Any] = {"sweep": [], "rounds": []}
    with contextlib.ExitStack() as stack:
        cluster = gid = None
        if do1:
            cluster = stack.enter_context(Cluster("w1", log_dir, s))
            w1["params"] = cluster.params
            gid = cluster.one_group()
        if len(s.sweep) > 1:
            for p in s.sweep:
                if cluster is not None and gid is not None:
                    w1["sweep"].append(_w1_point(cluster, gid, p, s))
                if do6:
                    w6["sweep"].append(_w6_point(p, s, log_dir))
        n1 = _best_n(w1["sweep"], s.sweep)
        n6 = _best_n(w6["sweep"], s.sweep)
        for r in range(s.rounds):
            log(f"  round {r + 1}/{s.rounds}")
            if cluster is not None and gid is not None:
                w1["rounds"].append(_w1_point(cluster, gid, n1, s))
                w1["rounds_pipelined"].append(_w1_point(
                    cluster, gid, n1, s, "w1 nuraft_mesg pipelined", pipelined=True))
            if do6:
                w6["rounds"].append(_w6_point(n6, s, log_dir))
    for w in (w1, w6):
        w["rounds"] = [r for r in w["rounds"] if "commits_per_s" in r]
        w["sweep"] = [r for r in w["sweep"] if "commits_per_s" in r]
        if not w["sweep"] and w["rounds"]:  # one N: the rounds are the sweep's point
            w["sweep"] = [max(w["rounds"], key=lambda r: r["commits_per_s"])]
    out: dict[str, Any] = {}
    if do1:
        if not w1["sweep"]:
            raise RuntimeError("workload 1: no sweep point ran")
        w1["best"] = max(w1["sweep"] + w1["rounds"], key=lambda r: r["commits_per_s"])
        w1["compare"] = _rounds_summary(w1["rounds"])
        w1["rounds_pipelined"] = [r for r in w1["rounds_pipelined"] if "commits_per_s" in r]
        w1["compare_pipelined"] = _rounds_summary(w1["rounds_pipelined"])
        if profile and s.profile_seconds > 0:
            # a fresh cluster: a deep sweep point may have cost the group its leader
            with Cluster("w1-profile", log_dir, s) as pc:
                pgid = pc.one_group()
                leader = pc.wait_leader(pgid, 15)
                if leader is not None:
                    follower = next(n for n in pc.nodes if n is not leader)
                    w1["profile"] = profile_load(pc, leader, follower, pgid,
                                                 w1["best"]["proposers"], s, log_dir)
        out["w1"] = w1
    if do6 and w6["sweep"]:
        w6["best"] = max(w6["sweep"] + w6["rounds"], key=lambda r: r["commits_per_s"])
        w6["compare"] = _rounds_summary(w6["rounds"])
        out["w6"] = w6
    return out


def _best_n(points: list[dict[str, Any]], sweep: list[int]) -> int:
    ok = [r for r in points if "commits_per_s" in r]
    return int(max(ok, key=lambda r: r["commits_per_s"])["proposers"]) if ok else sweep[0]


def _rounds_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Best and median commits/s of the alternation rounds, and each round's CPU per entry
    (leader first), with the median of each position."""
    if not rounds:
        return {}
    rates = [r["commits_per_s"] for r in rounds]
    cpu = [r["cpu_us_per_commit"] for r in rounds]
    per_node = [sorted(c[k] for c in cpu if c[k] is not None) for k in range(len(cpu[0]))]
    return {
        "proposers": rounds[0]["proposers"],
        "rounds": len(rounds),
        "commits_per_s": rates,
        "best": max(rates),
        "median": statistics.median(rates),
        "cpu_us_per_commit": cpu,
        "median_cpu_us_per_commit": [round(statistics.median(v), 1) if v else None
                                     for v in per_node],
        "p50_ms": [r["p50_ms"] for r in rounds],
        "p99_ms": [r["p99_ms"] for r in rounds],
    }


def _leader_first(values: list[Any], leader: int) -> list[Any]:
    return [values[leader]] + [v for i, v in enumerate(values) if i != leader]


def _w1_point(cluster: Cluster, gid: str, p: int, s: Settings,
              tag: str = "w1 nuraft_mesg", *, pipelined: bool = False) -> dict[str, Any]:
    leader = cluster.wait_leader(gid, 15)
    if leader is None:
        log(f"  {tag} proposers={p}: no leader within 15 s")
        return {"proposers": p, "error": "no leader within 15 s"}
    res = run_load(cluster, [leader], [gid], p, s, pipelined=pipelined)
    res["proposers"] = p
    res["leader_index"] = cluster.nodes.index(leader)
    res["cpu_us_per_commit"] = cpu_us_per_commit(res, res["commits_per_s"],
                                                 res["leader_index"])
    res["cpu_pct_leader_first"] = _leader_first(res["cpu_pct"], res["leader_index"])
    log(f"  {tag} proposers={p}: {res['commits_per_s']:.0f} commits/s, "
        f"CPU us/commit (leader, followers) {res['cpu_us_per_commit']}, "
        f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
        f"cpu % (leader first) {res['cpu_pct_leader_first']}, "
        f"others {res['others_busy_cores']} cores, errors {res['errors']}")
    return res


def _w6_point(p: int, s: Settings, log_dir: Path) -> dict[str, Any]:
    import pysyncobj_bench

    res = pysyncobj_bench.run(proposers=p, seconds=s.load_seconds, warmup=s.warmup,
                              size=ENTRY_SIZE, log_dir=log_dir / "w6", python=PY)
    res.pop("hist", None)
    res["commits_per_s"] = round(res["commits_per_s"], 1)
    for k in ("p50_ms", "p99_ms", "mean_ms"):
        res[k] = _r(res[k])
    res["cpu_us_per_commit"] = cpu_us_per_commit(res, res["commits_per_s"],
                                                 res["leader_index"])
    res["cpu_pct_leader_first"] = _leader_first(res["cpu_pct"], res["leader_index"])
    log(f"  w6 PySyncObj   proposers={p}: {res['commits_per_s']:.0f} commits/s, "
        f"CPU us/commit (leader, followers) {res['cpu_us_per_commit']}, "
        f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
        f"cpu % (leader first) {res['cpu_pct_leader_first']}, "
        f"others {res['others_busy_cores']} cores, errors {res['errors']}")
    return res


def saturating_n(results: dict[str, Any], s: Settings) -> int:
    """The proposer count at which one group saturates: the smallest N of workload 1's
    sweep within 10 % of its best commits/s when it ran, else 256 (or the sweep's first N)."""
    w1 = results.get("w1")
    if not w1:
        return 256 if 256 in s.sweep else s.sweep[0]
    best = w1["best"]["commits_per_s"]
    return min(int(r["proposers"]) for r in w1["sweep"] + w1["rounds"]
               if r["commits_per_s"] >= 0.9 * best)


def _leader_changes(cluster: Cluster) -> int:
    return sum(r["leader_changes"] for r in cluster.status())


def workload8(s: Settings, log_dir: Path, n_sat: int) -> dict[str, Any]:
    """Overload: 4 x the saturating proposer count on one group, first with the group's
    bound on pending writes set to the saturating count (admission control refuses the rest
    with Busy; a refused proposer backs off exponentially), then with no effective bound
    (every write queues).  Leader changes in each window, p99 of the admitted writes,
    refusals."""
    out: dict[str, Any] = {"saturating_proposers": n_sat, "proposers": 4 * n_sat,
                           "points": []}
    for label, bound in (("bounded", n_sat), ("unbounded", 1 << 30)):
        st = dataclasses.replace(s, max_pending=bound)
        with Cluster(f"w8-{label}", log_dir, st) as cluster:
            gid = cluster.one_group()
            leader = cluster.wait_leader(gid, 15)
            if leader is None:
                out["points"].append({"label": label, "error": "no leader within 15 s"})
                continue
            before = _leader_changes(cluster)
            res = run_load(cluster, [leader], [gid], 4 * n_sat, s)
            res["leader_changes"] = _leader_changes(cluster) - before
            res["same_leader"] = cluster.leader(gid) is leader
        res.update({"label": label, "max_pending": bound,
                    "refused": res["errors"].get("Busy", 0),
                    "leader_index": cluster.nodes.index(leader)})
        res["cpu_us_per_commit"] = cpu_us_per_commit(res, res["commits_per_s"],
                                                     res["leader_index"])
        out["points"].append(res)
        log(f"  w8 {label} (max_pending {bound if bound < 1 << 30 else 'none'}), "
            f"{4 * n_sat} proposers: {res['commits_per_s']:.0f} commits/s, p50 "
            f"{res['p50_ms']} ms, p99 {res['p99_ms']} ms, refused {res['refused']}, "
            f"leader changes {res['leader_changes']}, same leader {res['same_leader']}, "
            f"CPU us/commit (leader, followers) {res['cpu_us_per_commit']}, "
            f"errors {res['errors']}")
    return out


def workload9(s: Settings, log_dir: Path, n_sat: int) -> dict[str, Any]:
    """Workload 1 on the durable SQLite store (every node persists its log and hard state
    before answering), ``s.rounds`` points at the saturating N; compared with workload 1's
    in-memory median in the report."""
    rounds = []
    with Cluster("w9", log_dir, s, durable=True) as cluster:
        gid = cluster.one_group()
        for r in range(max(1, s.rounds)):
            point = _w1_point(cluster, gid, n_sat, s, tag=f"w9 SQLite round {r + 1}")
            if "commits_per_s" in point:
                rounds.append(point)
    if not rounds:
        raise RuntimeError("workload 9: no point ran")
    return {"rounds": rounds, "compare": _rounds_summary(rounds)}


def workload2(s: Settings, log_dir: Path) -> dict[str, Any]:
    with Cluster("w2", log_dir, s) as cluster:
        created = cluster.create_groups(s.w2_groups, cap=s.create_cap, concurrency=16)
        gids = created["gids"]
        # give the groups up to 10 s to have a leader each (an overloaded node loses some)
        deadline = time.monotonic() + 10
        while True:
            led = [r["led"] for r in cluster.status()]
            if sum(led) >= 0.95 * created["created"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        points = []
        for per_group in s.w2_proposers:  # a small sweep, like workload 1's; the best counts
            point = run_load(cluster, cluster.nodes, gids, per_group, s)
            point.update({"proposers_per_group": per_group,
                          "proposers_total": per_group * s.w2_groups})
            # leaders are spread over the nodes: node order, each node's CPU over all commits
            point["cpu_us_per_commit_by_node"] = cpu_us_per_commit(
                point, point["commits_per_s"], 0)
            points.append(point)
            log(f"  w2 {s.w2_groups} groups, {per_group} proposers each: "
                f"{point['commits_per_s']:.0f} commits/s, p50 {point['p50_ms']} ms, "
                f"p99 {point['p99_ms']} ms, cpu {point['cpu_pct']}, CPU us/commit by node "
                f"{point['cpu_us_per_commit_by_node']}, "
                f"others {point['others_busy_cores']} cores, errors {point['errors']}")
    res = dict(max(points, key=lambda p: p["commits_per_s"]))
    res.update({"groups": s.w2_groups, "created": created["created"], "sweep": points,
                "led_per_node": led, "create_s": round(created["wall_s"], 2)})
    return res


READ_KINDS = (("linearizable", "linearizable", "leader"), ("lease", "lease", "leader"),
              ("follower", "linearizable", "follower"))
"""Workload 7's read kinds: (name, Manager.read mode, where the readers run)."""


def workload7(s: Settings, log_dir: Path) -> dict[str, Any]:
    sweep: list[dict[str, Any]] = []
    with Cluster("w7", log_dir, s, lease_reads=True) as cluster:
        gid = cluster.one_group()
        for p in s.sweep:
            leader = cluster.wait_leader(gid, 15)
            if leader is None:
                log(f"  w7 proposers={p}: no leader within 15 s")
                continue
            follower = next(n for n in cluster.nodes if n is not leader)
            point: dict[str, Any] = {"proposers": p,
                                     "writes": run_load(cluster, [leader], [gid], p, s)}
            for name, mode, role in READ_KINDS:
                node = leader if role == "leader" else follower
                point[name] = run_load(cluster, [node], [gid], p, s, read=mode, role=role)
            writes = point["writes"]["commits_per_s"]
            lin = point["linearizable"]["commits_per_s"]
            point["linearizable_per_write"] = round(lin / writes, 2) if writes else None
            log(f"  w7 proposers={p}: writes {writes:.0f}/s; " + "; ".join(
                f"{name} {point[name]['commits_per_s']:.0f}/s (p50 {point[name]['p50_ms']} "
                f"p99 {point[name]['p99_ms']} ms, errors {point[name]['errors']})"
                for name, _, _ in READ_KINDS))
            sweep.append(point)
    if not sweep:
        raise RuntimeError("workload 7: no sweep point ran")
    return {"sweep": sweep,
            "best": {name: max(pt[name]["commits_per_s"] for pt in sweep)
                     for name in ("writes", *(k for k, _, _ in READ_KINDS))}}


def idle_measure(cluster: Cluster, s: Settings, groups: int) -> dict[str, Any]:
    time.sleep(s.idle_settle)
    before = cluster.status()
    win = Window(cluster.pids)
    time.sleep(s.idle_window)
    window = win.close()
    after = cluster.status()
    return {
        "groups": groups,
        "hosted": [r["hosted"] for r in after],
        "led": [r["led"] for r in after],
        "with_leader": [r["with_leader"] for r in after],
        "leader_changes_in_window": sum(a["leader_changes"] - b["leader_changes"]
                                        for a, b in zip(after, before, strict=True)),
        "rss_mb": [round(proc_rss_mb(p), 1) for p in cluster.pids],
        **window,
    }


def workload3_5(s: Settings, log_dir: Path, *, want5: bool) -> dict[str, Any]:
    """Idle clusters of each size in ``s.idle_sizes``; the largest one's creation is
    workload 5."""
    out: dict[str, Any] = {"idle": []}
    largest = max(s.idle_sizes)
    for size in s.idle_sizes:
        with Cluster(f"w3-{size}", log_dir, s) as cluster:
            log(f"  creating {size} groups (cap {s.create_cap:.0f} s) ...")
            created = cluster.create_groups(size, cap=s.create_cap,
                                            concurrency=s.create_concurrency)
            log(f"  created {created['created']}/{size} in {created['wall_s']:.1f} s "
                f"(timed out: {created['timed_out']}); errors {created['errors']}")
            # "elected": every node hosts the group and knows its leader
            idle = idle_measure(cluster, s, size)
            idle["created"] = created["created"]
            idle["create_wall_s"] = round(created["wall_s"], 2)
            out["idle"].append(idle)
            log(f"  w3 idle {size} groups (created {created['created']}): cpu "
                f"{idle['cpu_pct']} %, with leader {idle['with_leader']}, leader changes "
                f"{idle['leader_changes_in_window']}, others {idle['others_busy_cores']} cores")
            if size == largest and want5:
                done = created["done_at"]
                out["create"] = {
                    "groups": size, "created": created["created"],
                    "wall_s": round(created["wall_s"], 2), "cap_s": s.create_cap,
                    "timed_out": created["timed_out"], "errors": created["errors"],
                    "elected_on_every_node": min(idle["with_leader"]),
                    # (seconds, groups complete) every 10 % of the groups, for the plot
                    "progress": [[round(done[i - 1], 2), i] for i in
                                 sorted({max(1, len(done) * k // 20) for k in range(1, 21)})]
                    if done else [],
                    "rate_per_s": round(created["created"] / created["wall_s"], 1),
                }
    return out


def workload4(s: Settings, log_dir: Path) -> dict[str, Any]:
    import trio

    with Cluster("w4", log_dir, s, durable=True) as cluster:
        gid = cluster.one_group()
        result = trio.run(_failover, cluster, gid, s)
        result["params"] = cluster.params
    high = (cluster.params.get("election_ms") or [0, 0])[1]
    result["target_ms"] = high + 200
    return result


async def _failover(cluster: Cluster, gid: str, s: Settings) -> dict[str, Any]:
    import trio

    from nuraft_mesg import ExternalClient, RaftError

    samples: list[dict[str, Any]] = []
    payload = b"f" * ENTRY_SIZE
    by_uuid = {n.uuid: n for n in cluster.nodes}

    async with ExternalClient(cluster.directory, request_timeout=1.0,
                              retry_timeout=0.0) as client:

        async def write_once(order: list[str]) -> str | None:
            for target in order:
                try:
                    await client.append_entry(gid, payload, target)
                    return target
                except RaftError:
                    await trio.sleep(0.005)
            return None

        async def settle(limit: float) -> BenchNode | None:
            """Wait until every node is up, agrees on the leader and has applied what the
            leader had committed; returns the leader."""
            deadline = trio.current_time() + limit
            while trio.current_time() < deadline:
                views = await trio.to_thread.run_sync(
                    lambda: [n.request({"op": "leader", "group": gid}) for n in cluster.nodes])
                leaders: set[str] = {v.get("leader") or "" for v in views}
                if all(v.get("hosted") for v in views) and len(leaders) == 1 and "" not in leaders:
                    lead = by_uuid[leaders.pop()]
                    commit = max(v["commit"] for v in views)
                    if all(v["applied"] >= commit for v in views):
                        return lead
                await trio.sleep(0.05)
            return None

        for i in range(s.kills):
            leader = await settle(30)
            if leader is None:
                samples.append({"kill": i, "error": "cluster did not settle in 30 s"})
                break
            if await write_once([leader.uuid]) is None:  # the leader takes writes
                await trio.sleep(0.2)
            order = [leader.uuid] + [n.uuid for n in cluster.nodes if n is not leader]
            t_kill = trio.current_time()
            leader.kill9()
            first_ok = None
            attempts = 0
            new_leader = ""
            while trio.current_time() - t_kill < 15:
                attempts += 1
                target = await write_once(order)
                if target is not None:
                    first_ok = trio.current_time()
                    new_leader = target
                    break
            sample: dict[str, Any] = {"kill": i, "attempts": attempts}
            if first_ok is None:
                sample["error"] = "no write committed within 15 s"
            else:
                sample["ms"] = round((first_ok - t_kill) * 1000, 1)
                sample["new_leader"] = cluster.nodes.index(by_uuid[new_leader]) + 1
            sample["killed"] = cluster.nodes.index(leader) + 1
            samples.append(sample)
            log(f"  w4 kill {i + 1}/{s.kills}: node {sample['killed']} -> "
                f"{sample.get('ms', sample.get('error'))} ms")
            await trio.to_thread.run_sync(cluster.restart, leader)
    times = [x["ms"] for x in samples if "ms" in x]
    return {
        "kills": s.kills, "samples": samples, "ok": len(times),
        "p50_ms": exact_percentile(times, 0.50), "p99_ms": exact_percentile(times, 0.99),
        "max_ms": max(times) if times else None,
    }


# =============================================================================================
# Profiling (py-spy, else cProfile inside the node)
# =============================================================================================
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("idle (epoll wait)", ("/trio/_core/_io_epoll.py", "/selectors.py")),
    ("socket send/recv (trio/_socket.py)", ("/trio/_socket.py",)),
    ("HTTP/2 (h2, hpack, hyperframe)", ("/h2/", "/hpack/", "/hyperframe/")),
    ("purerpc", ("/purerpc/",)),
    ("protobuf", ("/google/protobuf/", "_pb2")),
    ("Raft core (nuraft_mesg/raft)", ("/nuraft_mesg/raft/",)),
    ("transport (grpc/, codec, peers)", ("/nuraft_mesg/transport/",)),
    ("runtime (group, manager)", ("/nuraft_mesg/group", "/nuraft_mesg/manager",
                                  "/nuraft_mesg/oneshot.py", "/nuraft_mesg/forwarding.py",
                                  "/nuraft_mesg/liveness.py", "/nuraft_mesg/routing.py",
                                  "/nuraft_mesg/reads.py", "/nuraft_mesg/admission.py")),
    ("storage", ("/nuraft_mesg/storage/",)),
    ("other nuraft_mesg", ("/nuraft_mesg/",)),
    ("benchmark proposers", ("/benchmarks/", "/node.py", "/benchlib.py")),
    ("trio / anyio scheduling", ("/trio/", "/anyio/", "/outcome/", "/sniffio/")),
]
"""Self time of a sample goes to the category of its innermost frame's file."""

INCLUSIVE: list[tuple[str, tuple[str, ...]]] = [
    ("proposers (Manager.append_entries)", ("Manager.append_entries ",)),
    ("group loop (RaftGroup.run)", ("RaftGroup.run ",)),
    ("  Raft core (RaftNode.*)", ("RaftNode.",)),
    ("sending batches (PeerSender._pump)", ("PeerSender._pump ",)),
    ("answers read (_Link._read)", ("_Link._read ",)),
    ("requests served (GrpcServer._serve_raft_stream)",
     ("GrpcServer._serve_raft_stream ",)),
    ("connection reader (_Socket._listen)", ("_Socket._listen ",)),
    ("HTTP/2 writer (SocketWrapper._writer_thread)", ("SocketWrapper._writer_thread ",)),
    ("codec (encode/decode, protobuf)", ("/codec.py", "_pb2", "google/protobuf")),
    ("h2 / hpack / hyperframe", ("(h2/", "(hpack/", "(hyperframe/")),
]
"""Inclusive time: samples with at least one frame matching (function name or file)."""


def _path(frame: str) -> str:
    """The file of a py-spy frame "func (path:line)", with a leading "/"."""
    where = frame.rpartition(" (")[2].rstrip(")")
    return "/" + where.rsplit(":", 1)[0].lstrip("/")


def categorize(frame: str) -> str:
    path = _path(frame)
    for name, needles in CATEGORIES:
        if any(n in path for n in needles):
            return name
    return "other (stdlib, interpreter)"


def analyze_collapsed(path: Path, top: int = 20) -> dict[str, Any]:
    """Self time per category and per function, and inclusive time of the main code paths,
    from py-spy's raw (collapsed-stack) output."""
    self_cat: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_cat[categorize(leaf)] += count
        self_fn[_short(leaf)] += count
        for name, needles in INCLUSIVE:
            if any(n in f for f in frames for n in needles):
                incl[name] += count
    idle = self_cat.get("idle (epoll wait)", 0)
    busy = total - idle

    def pct(n: int, d: int) -> float:
        return round(100 * n / d, 1) if d else 0.0

    return {
        "samples": total,
        "idle_pct": pct(idle, total),
        "self_pct_of_busy": {k: pct(v, busy) for k, v in self_cat.most_common()
                             if k != "idle (epoll wait)"},
        "inclusive_pct_of_busy": {k: pct(incl[k], busy) for k, _ in INCLUSIVE},
        "top_self_pct_of_busy": [[k, pct(v, busy)] for k, v in self_fn.most_common(top + 1)
                                 if "_io_epoll.py" not in k][:top],
    }


def _short(frame: str) -> str:
    # "func (/long/path/site-packages/pkg/mod.py:123)" -> "func (pkg/mod.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/", "benchmarks/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def profile_load(cluster: Cluster, leader: BenchNode, follower: BenchNode, gid: str,
                 proposers: int, s: Settings, log_dir: Path) -> dict[str, Any]:
    pyspy = shutil.which("py-spy", path=str(Path(PY).parent) + os.pathsep
                         + os.environ.get("PATH", ""))
    out: dict[str, Any] = {"proposers": proposers, "seconds": s.profile_seconds}
    prof_dir = log_dir / "profile"
    prof_dir.mkdir(parents=True, exist_ok=True)
    if pyspy is not None:
        out["tool"] = "py-spy (sampling, 100 Hz, --idle, --nonblocking)"
        cmd = {"op": "load", "groups": [gid], "proposers": proposers, "warmup_s": 1.0,
               "seconds": s.profile_seconds + 1, "size": ENTRY_SIZE}
        leader.send(cmd)
        time.sleep(1.0)
        spies = {}
        for role, node in (("leader", leader), ("follower", follower)):
            raw = prof_dir / f"{role}.txt"
            spies[role] = (raw, subprocess.Popen(
                [pyspy, "record", "-p", str(node.pid), "-d", str(int(s.profile_seconds)),
                 "-r", "100", "--idle", "--nonblocking", "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = {}
        for role, (_raw, proc) in spies.items():
            _, err = proc.communicate(timeout=s.profile_seconds + 60)
            if proc.returncode != 0:
                errors[role] = err.strip()[-500:]
        reply = leader.recv(s.profile_seconds + 120)
        out["commits_per_s_while_profiled"] = round(reply["commits"] / reply["seconds"], 1)
        if not errors:
            for role, (raw, _) in spies.items():
                out[role] = analyze_collapsed(raw)
                out[role]["raw"] = str(raw)
            return out
        out["py_spy_errors"] = errors
        log(f"  py-spy failed ({errors}); falling back to cProfile")
    # cProfile inside the leader (slows it down: only the shares are meaningful)
    import pstats

    out["tool"] = "cProfile (in the leader process)"
    path = prof_dir / "leader.pstats"
    leader.request({"op": "cprofile", "action": "start"})
    res = run_load(cluster, [leader], [gid], proposers, s, seconds=s.profile_seconds)
    leader.request({"op": "cprofile", "action": "stop", "path": str(path)})
    out["commits_per_s_while_profiled"] = res["commits_per_s"]
    stats = pstats.Stats(str(path))
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    by_cat: Counter[str] = Counter()
    by_fn: Counter[str] = Counter()
    for (file, _line, fn), v in stats.stats.items():  # type: ignore[attr-defined]
        by_cat[categorize(file)] += v[2]
        by_fn[_short(f"{fn} ({file}:0)")] += v[2]
    out["leader"] = {
        "self_pct_of_busy": {k: round(100 * v / total, 1) for k, v in by_cat.most_common()},
        "top_self_pct_of_busy": [[k, round(100 * v / total, 1)]
                                 for k, v in by_fn.most_common(20)],
        "raw": str(path),
    }
    return out


# =============================================================================================
# Report: table, JSON, plot, docs block
# =============================================================================================
def fmt(x: Any, nd: int = 0, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float | int):
        return f"{x:,.{nd}f}{unit}"
    return str(x)


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: workload, figure, value, target, met (None: no target)."""
    rows: list[dict[str, Any]] = []
    w1, w2, w6 = results.get("w1"), results.get("w2"), results.get("w6")
    w34, w4 = results.get("w3_5"), results.get("w4")

    def row(wl: str, figure: str, value: str, target: str = "-", met: bool | None = None
            ) -> None:
        rows.append({"workload": wl, "figure": figure, "value": value, "target": target,
                     "met": met})

    w0 = results.get("w0")
    if w0:
        rs = w0["results"]
        row("0 transport micro", "RaftStep calls/s, 1 process, concurrency "
            + "/".join(str(r["concurrency"]) for r in rs),
            "/".join(fmt(r["calls_per_s"]) for r in rs), "(bare purerpc: ~900)")
        row("0 transport micro", "CPU per call, client + server (us)",
            "/".join(fmt(r["cpu_us_per_call"]) for r in rs))
        st = w0.get("stream") or []
        if st:
            row("0 transport micro", "RaftStream messages/s, batches of "
                + "/".join(str(r["batch"]) for r in st),
                "/".join(fmt(r["msgs_per_s"]) for r in st))
            row("0 transport micro", "RaftStream CPU per message, client + server (us)",
                "/".join(fmt(r["cpu_us_per_msg"]) for r in st))
    if w1:
        b = w1["best"]
        row("1 one group", f"commits/s (best of sweep and rounds, {b['proposers']} proposers)",
            fmt(b["commits_per_s"]))
        row("1 one group", "commit latency p50 / p99",
            f"{fmt(b['p50_ms'], 1)} / {fmt(b['p99_ms'], 1)} ms")
        one = next((r for r in w1["sweep"] if r["proposers"] == 1), None)
        if one is not None:
            row("1 one group, 1 proposer", "closed-loop commit latency p50 / p99",
                f"{fmt(one['p50_ms'], 2)} / {fmt(one['p99_ms'], 2)} ms ({fmt(one['commits_per_s'])}"
                " commits/s)", "p50 <= 2 ms, p99 <= 10 ms",
                one["p50_ms"] is not None and one["p99_ms"] is not None
                and one["p50_ms"] <= 2 and one["p99_ms"] <= 10)
        row("1 one group", "CPU % per node (leader first) / entries per append",
            f"{'/'.join(fmt(c) for c in b['cpu_pct_leader_first'])} / "
            f"{fmt(b['entries_per_append'], 1)}")
    for key, lib, which in (("w1", "nuraft_mesg", "compare"),
                            ("w1", "nuraft_mesg pipelined", "compare_pipelined"),
                            ("w6", "PySyncObj", "compare")):
        cmp = (results.get(key) or {}).get(which) or {}
        if not cmp:
            continue
        wl = f"1/6 compare ({cmp['rounds']} rounds A B)"
        row(wl, f"{lib} commits/s best / median ({cmp['proposers']} proposers)",
            f"{fmt(cmp['best'])} / {fmt(cmp['median'])}")
        row(wl, f"{lib} CPU us per committed entry, leader/f/f, per round",
            "; ".join("/".join(fmt(x, 1) for x in c) for c in cmp["cpu_us_per_commit"]))
        med = cmp["median_cpu_us_per_commit"]
        if key == "w1":
            ok = (med[0] is not None and med[0] <= 15
                  and all(m is not None and m <= 8 for m in med[1:]))
            row(wl, f"{lib} median CPU us/entry leader / followers",
                "/".join(fmt(x, 1) for x in med), "leader <= 15, follower <= 8", ok)
        else:
            row(wl, f"{lib} median CPU us/entry leader / followers",
                "/".join(fmt(x, 1) for x in med))
    c1 = (w1 or {}).get("compare") or {}
    c6 = (w6 or {}).get("compare") or {}
    if c1 and c6:
        rm = c1["median"] / c6["median"] if c6["median"] else float("inf")
        rb = c1["best"] / c6["best"] if c6["best"] else float("inf")
        results["ratio_median"] = round(rm, 3)
        results["ratio_best"] = round(rb, 3)
        row("1/6 ratio", "nuraft_mesg / PySyncObj commits/s, median vs median",
            f"{rm:.2f}", ">= 2.00", rm >= 2.0)
        row("1/6 ratio", "nuraft_mesg / PySyncObj commits/s, best vs best",
            f"{rb:.2f}", ">= 2.00", rb >= 2.0)
    cp = (w1 or {}).get("compare_pipelined") or {}
    if cp and c6:
        pm = cp["median"] / c6["median"] if c6["median"] else float("inf")
        pb = cp["best"] / c6["best"] if c6["best"] else float("inf")
        results["ratio_pipelined_median"] = round(pm, 3)
        results["ratio_pipelined_best"] = round(pb, 3)
        row("1/6 ratio", "nuraft_mesg pipelined (one task, window N) / PySyncObj (its "
            "callback window N), median vs median", f"{pm:.2f}", ">= 2.00", pm >= 2.0)
        row("1/6 ratio", "nuraft_mesg pipelined / PySyncObj, best vs best",
            f"{pb:.2f}", ">= 2.00", pb >= 2.0)
    if w2:
        base = w1["best"]["commits_per_s"] if w1 else None
        per = "/".join(str(p["proposers_per_group"]) for p in w2.get("sweep", [w2]))
        row(f"2 {w2['groups']} groups",
            f"aggregate commits/s (best of {per} proposers per group)",
            fmt(w2["commits_per_s"]),
            f">= (1) ({fmt(base)})" if base else ">= (1)",
            w2["commits_per_s"] >= base if base else None)
        row(f"2 {w2['groups']} groups", "commit latency p50 / p99",
            f"{fmt(w2['p50_ms'], 1)} / {fmt(w2['p99_ms'], 1)} ms")
        if w2.get("cpu_us_per_commit_by_node"):
            row(f"2 {w2['groups']} groups", "CPU us per committed entry, by node (all lead)",
                "/".join(fmt(c, 1) for c in w2["cpu_us_per_commit_by_node"]))
    if w34:
        for idle in w34["idle"]:
            partial = idle["created"] < idle["groups"]
            label = f"3 idle {idle['groups']:,} groups" + (
                f" (only {idle['created']:,} created)" if partial else "")
            worst = max(idle["cpu_pct"])
            value = "/".join(fmt(c, 1) for c in idle["cpu_pct"]) + (
                f" ({min(idle['with_leader']):,} with a known leader on every node)")
            if idle["groups"] >= 10000:
                row(label, "CPU % of one core per node", value, "<= 5 % each",
                    worst <= 5.0 and not partial)
            else:
                row(label, "CPU % of one core per node", value)
        sizes = sorted(w34["idle"], key=lambda i: i["created"])
        measured_10k = any(i["created"] >= 10000 for i in sizes)
        if len(sizes) >= 2 and sizes[-1]["created"] > sizes[0]["created"]:
            # The marginal cost of an idle group (the slope between the smallest and the
            # largest cluster), not the total over the smallest: a node's fixed cost (its
            # liveness pings, the runtime) is not per group.
            lo, hi = sizes[0], sizes[-1]
            per_group = max(0.0, (max(hi["cpu_pct"]) - max(lo["cpu_pct"]))
                            / (hi["created"] - lo["created"]))
            results["idle_pct_per_group"] = round(per_group, 5)
            if not measured_10k:
                row(f"3 idle ({lo['created']:,} -> {hi['created']:,} groups)",
                    "marginal CPU % per idle group per node / extrapolated to 10,000",
                    f"{per_group:.4f} % / "
                    f"{max(hi['cpu_pct']) + per_group * (10000 - hi['created']):.1f} %",
                    "<= 5 % at 10,000")
        c = w34.get("create")
        if c:
            value = f"{fmt(c['wall_s'], 1)} s" + (
                f" (capped: {c['created']:,} of {c['groups']:,} created)"
                if c["created"] < c["groups"] else "")
            row(f"5 create {c['groups']:,} groups", "wall time (create + elect)", value,
                "<= 60 s", c["created"] == c["groups"] and c["wall_s"] <= 60)
    if w4:
        row(f"4 failover x{w4['kills']}", "kill -9 leader -> next commit p50 / p99",
            f"{fmt(w4['p50_ms'])} / {fmt(w4['p99_ms'])} ms ({w4['ok']} ok)",
            f"p99 <= {w4['target_ms']} ms",
            (w4["p99_ms"] is not None and w4["p99_ms"] <= w4["target_ms"]
             and w4["ok"] == w4["kills"]))
    if w6:
        b = w6["best"]
        row("6 PySyncObj", f"commits/s (best of sweep and rounds, {b['proposers']} proposers)",
            fmt(b["commits_per_s"]))
        row("6 PySyncObj", "commit latency p50 / p99",
            f"{fmt(b['p50_ms'], 1)} / {fmt(b['p99_ms'], 1)} ms")
    w8 = results.get("w8")
    if w8:
        for pt in w8["points"]:
            if "commits_per_s" not in pt:
                row("8 overload", f"{pt['label']}", pt.get("error", "failed"))
                continue
            wl = f"8 overload {w8['proposers']} proposers, {pt['label']}"
            bound = pt["max_pending"] if pt["max_pending"] < 1 << 30 else "none"
            row(wl, f"commits/s, p50 / p99 (max_pending {bound})",
                f"{fmt(pt['commits_per_s'])}, {fmt(pt['p50_ms'], 1)} / "
                f"{fmt(pt['p99_ms'], 1)} ms")
            row(wl, "refused (Busy) / leader changes / CPU us per entry leader/f/f",
                f"{fmt(pt['refused'])} / {pt['leader_changes']} / "
                + "/".join(fmt(c, 1) for c in pt["cpu_us_per_commit"]),
                "no leader change" if pt["label"] == "bounded" else "-",
                (pt["leader_changes"] == 0 and pt["same_leader"])
                if pt["label"] == "bounded" else None)
    w9 = results.get("w9")
    if w9 and w9.get("compare"):
        c8 = w9["compare"]
        base = ((w1 or {}).get("compare") or {}).get("median")
        row("9 SQLite store", f"commits/s best / median ({c8['rounds']} rounds, "
            f"{c8['proposers']} proposers)", f"{fmt(c8['best'])} / {fmt(c8['median'])}",
            f">= 50 % of (1)'s median ({fmt(base / 2)})" if base else ">= 50 % of (1)",
            c8["median"] >= base / 2 if base else None)
        row("9 SQLite store", "median CPU us per entry leader/f/f, p99 ms per round",
            "/".join(fmt(c, 1) for c in c8["median_cpu_us_per_commit"]) + "; "
            + "/".join(fmt(x, 1) for x in c8["p99_ms"]))
    others = []
    for key, label in (("w1", "1"), ("w6", "6")):
        if results.get(key):
            others.append(f"({label}) {results[key]['best']['others_busy_cores']}")
    if w2:
        others.append(f"(2) {w2['others_busy_cores']}")
    if w34:
        others += [f"(3, {i['groups']:,}) {i['others_busy_cores']}" for i in w34["idle"]]
    w7 = results.get("w7")
    if w7:
        for pt in w7["sweep"]:
            ratio = pt["linearizable_per_write"]
            row("7 reads", f"reads/s (p50/p99 ms) at {pt['proposers']} readers: "
                "writes / linearizable / lease / follower",
                " / ".join(f"{fmt(pt[k]['commits_per_s'])} ({fmt(pt[k]['p50_ms'], 1)}/"
                           f"{fmt(pt[k]['p99_ms'], 1)})"
                           for k in ("writes", "linearizable", "lease", "follower")))
            row("7 reads", f"linearizable reads per write at {pt['proposers']} readers",
                fmt(ratio, 2), ">= 2.00", ratio is not None and ratio >= 2.0)
    if others:
        row("machine", "other processes' CPU in the measured windows (cores of "
            f"{results['meta']['cpus']})", ", ".join(others))
    return rows


def table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    head = ["workload", "figure", "value", "target", "met"]
    body = [[r["workload"], r["figure"], r["value"], r["target"],
             {True: "yes", False: "MISS", None: ""}[r["met"]]] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    sep = "  "
    lines = [sep.join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append(sep.join("-" * w for w in widths))
    lines += [sep.join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def sweep_table(results: dict[str, Any]) -> str:
    w1, w6 = results.get("w1"), results.get("w6")
    if not w1 and not w6:
        return ""
    lines = ["| proposers | nuraft_mesg commits/s | p50 / p99 ms | CPU % (leader, f, f) "
             "| CPU us/entry (leader, f, f) | PySyncObj commits/s | p50 / p99 ms "
             "| CPU % (leader, f, f) | CPU us/entry (leader, f, f) |",
             "|---|---|---|---|---|---|---|---|---|"]
    ps = sorted({r["proposers"] for w in (w1, w6) if w for r in w["sweep"]})
    for p in ps:
        a = next((r for r in (w1 or {}).get("sweep", []) if r["proposers"] == p), None)
        b = next((r for r in (w6 or {}).get("sweep", []) if r["proposers"] == p), None)

        def cells(r: dict[str, Any] | None) -> list[str]:
            if r is None:
                return ["", "", "", ""]
            return [fmt(r["commits_per_s"]), f"{fmt(r['p50_ms'], 1)} / {fmt(r['p99_ms'], 1)}",
                    "/".join(fmt(c) for c in r["cpu_pct_leader_first"]),
                    "/".join(fmt(c, 1) for c in r["cpu_us_per_commit"])]
        lines.append("| " + " | ".join([str(p), *cells(a), *cells(b)]) + " |")
    return "\n".join(lines)


def profile_table(results: dict[str, Any]) -> str:
    prof = (results.get("w1") or {}).get("profile")
    if not prof or "leader" not in prof:
        return ""
    roles = [r for r in ("leader", "follower") if r in prof]
    lines = [f"Profile of workload 1 ({prof['tool']}, {prof['proposers']} proposers, "
             f"{fmt(prof.get('commits_per_s_while_profiled'))} commits/s while profiled); "
             "shares of the samples in which the process was not idle in epoll"
             + "".join(f", {r} idle {prof[r].get('idle_pct', 'n/a')} %" for r in roles) + ":",
             "",
             "| self time, by the innermost frame's package | "
             + " | ".join(roles) + " |",
             "|---|" + "---|" * len(roles)]
    cats: list[str] = []
    for r in roles:
        cats += [c for c in prof[r]["self_pct_of_busy"] if c not in cats]
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(
            fmt(prof[r]["self_pct_of_busy"].get(c), 1) for r in roles) + " |")
    if all("inclusive_pct_of_busy" in prof[r] for r in roles):
        lines += ["", "| inclusive time, by code path | " + " | ".join(roles) + " |",
                  "|---|" + "---|" * len(roles)]
        for c in prof[roles[0]]["inclusive_pct_of_busy"]:
            lines.append(f"| {c.strip()} | " + " | ".join(
                fmt(prof[r]["inclusive_pct_of_busy"].get(c), 1) for r in roles) + " |")
    top = prof[roles[0]].get("top_self_pct_of_busy", [])[:10]
    if top:
        lines += ["", f"Top functions by self time ({roles[0]}): "
                  + "; ".join(f"`{name}` {pct} %" for name, pct in top) + "."]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing (the bench extra): no plot")
        return False
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(f"nuraft_mesg benchmarks ({results['meta']['date']}, "
                 f"{results['meta']['cpus']} cores{', quick' if results['meta']['quick'] else ''})")
    w1, w6, w2 = results.get("w1"), results.get("w6"), results.get("w2")
    w34, w4 = results.get("w3_5"), results.get("w4")
    ax = axes[0][0]
    for w, label, color in ((w1, "nuraft_mesg", "C0"), (w6, "PySyncObj", "C1")):
        if w:
            xs = [r["proposers"] for r in w["sweep"]]
            ax.plot(xs, [r["commits_per_s"] for r in w["sweep"]], "o-", color=color,
                    label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent proposers")
    ax.set_ylabel("commits/s")
    ax.set_title("(1)/(6) one group, 3 processes, 100 B")
    if w1 or w6:
        ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[0][1]
    for w, label, color in ((w1, "nuraft_mesg", "C0"), (w6, "PySyncObj", "C1")):
        if w:
            xs = [r["proposers"] for r in w["sweep"]]
            ax.plot(xs, [r["p50_ms"] for r in w["sweep"]], "o-", color=color,
                    label=f"{label} p50")
            ax.plot(xs, [r["p99_ms"] for r in w["sweep"]], "x--", color=color,
                    label=f"{label} p99")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent proposers")
    ax.set_ylabel("commit latency (ms)")
    ax.set_title("(1)/(6) latency")
    if w1 or w6:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0][2]
    names, values = [], []
    if w1:
        names.append("(1) 1 group")
        values.append(w1["best"]["commits_per_s"])
    if w2:
        names.append(f"(2) {w2['groups']} groups")
        values.append(w2["commits_per_s"])
    if w6:
        names.append("(6) PySyncObj")
        values.append(w6["best"]["commits_per_s"])
    w9 = results.get("w9")
    if w9 and w9.get("compare"):
        names.append("(9) SQLite")
        values.append(w9["compare"]["best"])
    colors = {"(1)": "C0", "(2)": "C2", "(6)": "C1", "(9)": "C3"}
    ax.bar(names, values, color=[colors[n[:3]] for n in names])
    if w6:
        ax.axhline(2 * w6["best"]["commits_per_s"], color="red", ls="--",
                   label="target (1): 2 x PySyncObj")
        ax.legend()
    ax.set_ylabel("commits/s (best)")
    ax.set_title("throughput")
    ax = axes[1][0]
    if w34:
        labels = [f"{i['groups']:,} requested\n{i['created']:,} created"
                  for i in w34["idle"]]
        width = 0.25
        for k in range(3):
            ax.bar([x + (k - 1) * width for x in range(len(labels))],
                   [i["cpu_pct"][k] for i in w34["idle"]], width, label=f"node {k + 1}")
        ax.set_xticks(range(len(labels)), labels)
        ax.axhline(5, color="red", ls="--", label="target (3): 5 %")
        top = max([5.0, *[max(i["cpu_pct"]) for i in w34["idle"]]])
        ax.set_ylim(0, top * 1.45)
        ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax.set_ylabel("CPU % of one core")
    ax.set_title("(3) idle groups")
    ax = axes[1][1]
    if w4:
        ok = [x for x in w4["samples"] if "ms" in x]
        ax.plot([x["kill"] + 1 for x in ok], [x["ms"] for x in ok], "o")
        ax.set_ylim(0, max([w4["target_ms"], *[x["ms"] for x in ok]]) * 1.15)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.axhline(w4["target_ms"], color="red", ls="--",
                   label=f"target (4): p99 <= {w4['target_ms']} ms")
        if w4["p99_ms"] is not None:
            ax.axhline(w4["p99_ms"], color="gray", ls=":", label=f"p99 {w4['p99_ms']:.0f} ms")
        ax.legend()
    ax.set_xlabel("kill #")
    ax.set_ylabel("kill -> next commit (ms)")
    ax.set_title("(4) failover")
    ax = axes[1][2]
    if w34 and w34.get("create"):
        c = w34["create"]
        xs = [0.0] + [p[0] for p in c["progress"]] + [c["wall_s"]]
        ys = [0] + [p[1] for p in c["progress"]] + [c["created"]]
        ax.plot(xs, ys, "-", label=f"groups complete ({c['created']:,})")
        ax.set_xlim(0, max(c["cap_s"], c["wall_s"], 60) * 1.05)
        ax.set_ylim(0, c["groups"] * 1.08)
        ax.axvline(60, color="red", ls="--", label="target (5): 60 s")
        ax.axhline(c["groups"], color="gray", ls=":", label=f"{c['groups']:,} groups")
        ax.legend()
    ax.set_xlabel("seconds")
    ax.set_ylabel("groups created (3 members)")
    ax.set_title("(5) creating groups")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def results_block(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    meta = results["meta"]
    parts = [
        RESULTS_START,
        f"_Generated by `python3 tools/dev.py bench` on {meta['date']} ({meta['cpus']} cores, "
        f"Python {meta['python']}, git {meta['git']}); machine load average at start "
        f"{meta['loadavg_start']}, at end {meta['loadavg_end']}. Total run time "
        f"{meta['run_s']:.0f} s._",
        "",
        table(rows, markdown=True),
        "",
    ]
    sweep = sweep_table(results)
    if sweep:
        parts += ["Proposer sweep (workloads 1 and 6):", "", sweep, ""]
    prof = profile_table(results)
    if prof:
        parts += [prof, ""]
    parts.append(RESULTS_END)
    return "\n".join(parts)


def update_docs(block: str, md: Path) -> bool:
    if not md.exists():
        return False
    text = md.read_text(encoding="utf-8")
    if RESULTS_START not in text or RESULTS_END not in text:
        return False
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    md.write_text(head + block + tail, encoding="utf-8")
    return True


# =============================================================================================
def log(msg: str) -> None:
    print(msg, flush=True)


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nuraft_mesg"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller, shorter (~1 minute)")
    parser.add_argument("--only", default="0,1,2,3,4,5,6,7,8,9",
                        help="comma-separated workload numbers (default: all; 0 is the "
                        "transport micro-benchmark)")
    parser.add_argument("--out", type=Path, help="where the JSON and PNG go "
                        "(default: docs/, or a temporary directory with --quick)")
    parser.add_argument("--log-dir", type=Path, help="node logs (default: a new temp dir)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile")
    parser.add_argument("--kills", type=int, help="failover repetitions")
    parser.add_argument("--sweep", help="proposer counts for workloads 1 and 6, e.g. 64,1024")
    parser.add_argument("--seconds", type=float, help="measured seconds per load point")
    parser.add_argument("--rounds", type=int, help="alternations A B of the one-group "
                        "comparison (workloads 1 and 6; default 3, 2 with --quick)")
    parser.add_argument("--groups", type=int, help="largest idle/creation size (workload 3/5)")
    parser.add_argument("--from-json", type=Path, metavar="JSON",
                        help="run nothing: re-print, re-plot and re-document a saved result")
    parser.add_argument("--heartbeat-ms", type=int, default=0,
                        help="RaftParams.heartbeat_interval_ms (default: RaftParams')")
    parser.add_argument("--election-ms", type=int, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--gc", default=DEFAULT_GC, metavar="G0,G1,G2",
                        help="gc thresholds of every node process, both libraries' "
                        f"('default': Python's own; default {DEFAULT_GC}, see benchlib)")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return report(json.loads(args.from_json.read_text(encoding="utf-8")),
                      args.out or args.from_json.parent, failures={}, started=time.monotonic())
    only = {int(x) for x in args.only.split(",") if x.strip()}
    s = Settings.make(args.quick)
    if args.kills is not None:
        s.kills = args.kills
    if args.sweep:
        s.sweep = [int(x) for x in args.sweep.split(",")]
    if args.seconds:
        s.load_seconds = args.seconds
    if args.rounds is not None:
        s.rounds = args.rounds
    if args.groups:
        s.idle_sizes = sorted({x for x in s.idle_sizes if x < args.groups} | {args.groups})
    s.heartbeat_ms = args.heartbeat_ms
    s.election_ms = tuple(args.election_ms) if args.election_ms else None
    os.environ[GC_ENV] = args.gc  # inherited by every node process
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="nuraft-bench-quick-")) if args.quick
                           else ROOT / "docs")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = args.log_dir or Path(tempfile.gettempdir()) / f"nuraft-bench-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"nuraft_mesg benchmarks{' (quick)' if s.quick else ''}: workloads "
        f"{sorted(only)}; node logs in {log_dir}; results to {out_dir}")
    started = time.monotonic()
    results: dict[str, Any] = {"meta": {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": s.quick, "cpus": os.cpu_count(), "python": platform.python_version(),
        "git": git_rev(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: v for k, v in vars(s).items()},
        "entry_bytes": ENTRY_SIZE,
        "gc_thresholds": args.gc,
    }}
    # SIGTERM: unwind (the clusters' context managers stop their nodes)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    failures: dict[str, str] = {}

    def attempt(key: str, title: str, fn: Any, *a: Any, **kw: Any) -> None:
        log(f"== workload {title}")
        t0 = time.monotonic()
        try:
            results[key] = fn(*a, **kw)
        except (NodeError, RuntimeError, OSError) as exc:
            failures[key] = f"{type(exc).__name__}: {exc}"
            log(f"  FAILED: {failures[key]}")
        log(f"  ({time.monotonic() - t0:.0f} s)")

    try:
        if 0 in only:
            attempt("w0", "0: transport micro-benchmark (one process)", workload0, s)
        if 1 in only or 6 in only:
            title = " and ".join(t for t, on in (("1: one group, 3 nodes", 1 in only),
                                                 ("6: PySyncObj", 6 in only)) if on)
            attempt("w1_6", f"{title} (proposer sweep, interleaved)", workload1_6, s,
                    log_dir, do1=1 in only, do6=6 in only, profile=not args.no_profile)
            results.update(results.pop("w1_6", {}))
        if 8 in only:
            n_sat = saturating_n(results, s)
            attempt("w8", f"8: overload, {4 * n_sat} proposers on one group", workload8, s,
                    log_dir, n_sat)
        if 9 in only:
            attempt("w9", "9: one group on the durable SQLite store", workload9, s, log_dir,
                    saturating_n(results, s))
        if 2 in only:
            attempt("w2", f"2: {s.w2_groups} active groups", workload2, s, log_dir)
        if 4 in only:
            attempt("w4", f"4: failover x{s.kills}", workload4, s, log_dir)
        if 7 in only:
            attempt("w7", "7: reads (linearizable, lease, follower) vs writes", workload7, s,
                    log_dir)
        if 3 in only or 5 in only:
            if 3 not in only:
                s.idle_sizes = [max(s.idle_sizes)]  # workload 5 alone: just the largest
            attempt("w3_5", "3/5: idle groups and group creation", workload3_5, s, log_dir,
                    want5=5 in only)
    except KeyboardInterrupt:
        log("interrupted")
        failures["interrupted"] = "yes"
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["meta"]["run_s"] = round(time.monotonic() - started, 1)
    results["meta"]["log_dir"] = str(log_dir)
    if failures:
        results["failures"] = failures
    return report(results, out_dir, failures=failures, started=started)


def report(results: dict[str, Any], out_dir: Path, *, failures: dict[str, str],
           started: float) -> int:
    """Print the table, write the JSON and the plot, refresh docs/benchmarks.md."""
    rows = evaluate(results)
    results["table"] = rows
    log("")
    log(table(rows))
    sweep = sweep_table(results)
    if sweep:
        log("")
        log(sweep)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "benchmarks.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    png_path = out_dir / "benchmarks.png"
    plotted = plot(results, png_path)
    log("")
    log(f"wrote {json_path}" + (f" and {png_path}" if plotted else ""))
    docs = ROOT / "docs"
    if (out_dir.resolve() == docs.resolve() and not failures
            and update_docs(results_block(results, rows), docs / "benchmarks.md")):
        log("updated the results block of docs/benchmarks.md")
    log(f"total {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
