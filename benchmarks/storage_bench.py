#!/usr/bin/env python3
"""Benchmark of the durable default store (a benchmark, not a test: it prints a table).

    .venv/bin/python benchmarks/storage_bench.py [--seconds 5] [--restart-groups 1000]

1. Commit throughput and latency: three Managers on loopback (one process, LocalCluster);
   ``groups`` groups, each led by one node, and ``writers`` concurrent writers per group, each
   calling ``append_entries`` in a loop (one 100-byte entry per call) for ``seconds``.  An
   append counts once it is committed on a quorum and applied on the leader.  Run with the
   in-memory stores and with the SQLite store (WAL, synchronous=FULL: an fsync per commit).
2. Restart: one node holding ``restart-groups`` groups (a few entries each) is stopped; the
   time to open its store (load + verify every record) and the time until every group runs
   again and leads (single-member groups re-elect themselves) are measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from nuraft_mesg import InMemoryApplication, Manager, ManagerConfig, RaftParams
from nuraft_mesg.errors import RaftError
from nuraft_mesg.storage.sqlite import SqliteStore
from nuraft_mesg.testing.local import LocalCluster

PARAMS = RaftParams()  # the defaults: 100 ms heartbeats, 200-400 ms election timeouts
TYPE = "bench"


@dataclass
class Result:
    label: str
    commits: int
    seconds: float
    latencies: list[float]
    fsyncs: int | None = None
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.commits / self.seconds

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000


async def throughput(label: str, data_dir: str | None, groups: int, writers: int,
                     seconds: float) -> Result:
    gids = [str(uuid.uuid4()) for _ in range(groups)]
    latencies: list[float] = []
    errors = 0
    async with LocalCluster.open(3, group_types={TYPE: PARAMS}, default_group_type=TYPE,
                                 data_dir=data_dir) as cluster:
        nodes = cluster.nodes
        for k, gid in enumerate(gids):
            owner = nodes[k % 3]
            await owner.mgr.create_group(gid, TYPE)
            for other in nodes:
                if other is not owner:
                    await owner.mgr.add_member(gid, other.uuid, priority=100)
        payload = b"set k " + b"x" * 94
        stores = [n.mgr.store for n in nodes if n.mgr.store is not None]
        before = sum(s.statistics().commits for s in stores)
        deadline = trio.current_time() + seconds

        async def writer(owner_index: int, gid: str) -> None:
            nonlocal errors
            mgr = nodes[owner_index].mgr
            while trio.current_time() < deadline:
                start = time.perf_counter()
                try:
                    await mgr.append_entries(gid, [payload])
                except RaftError:  # an overloaded loop can miss heartbeats: a new election
                    errors += 1
                    if not mgr.group(gid).is_leader:
                        await mgr.group(gid).wait_leader()
                        leader = mgr.group(gid).leader_id
                        mgr = next(n.mgr for n in nodes if n.uuid == leader)
                    continue
                latencies.append(time.perf_counter() - start)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for k, gid in enumerate(gids):
                for _ in range(writers):
                    nursery.start_soon(writer, k % 3, gid)
        elapsed = trio.current_time() - start
        fsyncs = sum(s.statistics().commits for s in stores) - before if stores else None
    return Result(label, len(latencies), elapsed, latencies, fsyncs, errors)


async def restart(n_groups: int, entries: int) -> tuple[float, float, float, int]:
    me = str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="nuraft-bench-") as tmp:
        cfg = ManagerConfig(server_uuid=me, data_dir=tmp)
        gids = [str(uuid.uuid4()) for _ in range(n_groups)]
        t0 = time.perf_counter()
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type(TYPE, PARAMS)

            async def fill(chunk: list[str]) -> None:
                for gid in chunk:
                    await mgr.create_group(gid, TYPE)
                    for i in range(entries):
                        await mgr.append_entries(gid, [b"set k%d v" % i])

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(fill, gids[i::50])
        fill_time = time.perf_counter() - t0
        size = _dir_size(tmp)

        t0 = time.perf_counter()
        store = await trio.to_thread.run_sync(lambda: SqliteStore(tmp))
        open_time = time.perf_counter() - t0
        store.close()

        t0 = time.perf_counter()
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type(TYPE, PARAMS)
            while sum(1 for g in gids if g in mgr.group_ids and mgr.group(g).is_leader) < n_groups:
                await mgr.wait_changed()
            rejoin_time = time.perf_counter() - t0
    return fill_time, open_time, rejoin_time, size


def _dir_size(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir())


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    results: list[Result] = []
    for groups, writers in args.shapes:
        for label, durable in (("memory", False), ("sqlite", True)):
            with tempfile.TemporaryDirectory(prefix="nuraft-bench-") as tmp:
                results.append(await throughput(
                    f"{label} {groups}g x {writers}w", tmp if durable else None,
                    groups, writers, args.seconds))
    rows = [("store, groups x writers/group", "commits/s", "p50 ms", "p99 ms", "fsyncs/s",
             "commits/fsync", "failed")]
    for r in results:
        per_sync = "" if not r.fsyncs else f"{r.commits * 3 / r.fsyncs:.1f}"
        rows.append((r.label, f"{r.rate:.0f}", f"{r.pct(0.5):.1f}", f"{r.pct(0.99):.1f}",
                     "" if r.fsyncs is None else f"{r.fsyncs / r.seconds:.0f}", per_sync,
                     str(r.errors)))
    print(f"\nCommit throughput, 3 nodes on loopback, {args.seconds:g} s per row "
          f"(fsyncs summed over the 3 nodes; commits/fsync counts each commit on 3 replicas)")
    print(table(rows))
    if args.restart_groups:
        fill, opened, rejoined, size = await restart(args.restart_groups, args.entries)
        print(f"\nRestart of a node holding {args.restart_groups} groups "
              f"({args.entries} entries each, database {size / 1e6:.1f} MB; "
              f"filled in {fill:.1f} s)")
        print(table([("step", "seconds"),
                     ("open the store (load + verify all records)", f"{opened:.3f}"),
                     ("Manager start until every group leads again", f"{rejoined:.3f}")]))
    print(f"\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"median of p50s {statistics.median(r.pct(0.5) for r in results):.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--restart-groups", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=5)
    parser.add_argument("--shape", dest="shapes", action="append", type=_shape,
                        help="GROUPSxWRITERS (repeat; default 1x1, 1x16, 16x4)")
    args = parser.parse_args()
    if not args.shapes:
        args.shapes = [(1, 1), (1, 16), (16, 4)]
    trio.run(main_async, args)


def _shape(text: str) -> tuple[int, int]:
    groups, _, writers = text.partition("x")
    return int(groups), int(writers)


if __name__ == "__main__":
    main()
