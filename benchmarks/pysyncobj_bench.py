#!/usr/bin/env python3
"""PySyncObj on workload 1: one group, 3 node processes, 100-byte commands, many concurrent
proposers in the leader's process; commits/s and commit latency, measured like
``benchmarks/node.py`` does for nuraft_mesg.

::

    python benchmarks/pysyncobj_bench.py [--proposers 256] [--seconds 10] [--warmup 2]

(``benchmarks/run.py`` calls :func:`run` in the same invocation as the nuraft_mesg workloads;
run standalone it prints one JSON object.)  Needs the ``bench`` extra (``pysyncobj``).

Each node is a ``SyncObj`` subclass holding a dict; its one ``@replicated`` method stores the
100-byte command under its first 8 bytes (the same work as nuraft_mesg's BenchStateMachine),
which name one of ``KEYS`` (16) keys: the state stays tiny.  That matters for PySyncObj only:
by default it compacts its log every 5,000 entries by pickling and gzipping the whole state in
its own thread, so a state of 16,384 keys cut its throughput by ~10x here, while nuraft_mesg
(``snapshot_distance=0``) never snapshots.
PySyncObj's defaults are kept (in-memory log, batched append_entries, its own tick thread),
as nuraft_mesg keeps its own defaults.  The proposers are a closed loop of ``proposers``
outstanding commands on the leader: the node's main thread issues a command whenever one
completes (its callback, run by PySyncObj's thread once the command is committed and applied
on the leader, records the latency and releases a semaphore).  This is PySyncObj's fastest
pattern we found: chaining the next command from inside the callback (no second thread) was
2-4x slower, because commands issued from PySyncObj's own thread wait for its next tick.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import KEYS, Histogram, NodeProcess, Window, apply_gc_setting, free_port


# -- the node (child process) -----------------------------------------------------------------
def node_main(self_addr: str, partners: list[str]) -> int:
    apply_gc_setting()
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Store(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(self_addr, partners, conf=SyncObjConf())
            self.data: dict[bytes, bytes] = {}

        @replicated  # type: ignore[untyped-decorator]
        def put(self, value: bytes) -> None:
            self.data[value[:8]] = value

    obj = Store()
    while obj._getLeader() is None:
        time.sleep(0.05)
    emit({"event": "ready", "pid": _pid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "status":
            leader = obj._getLeader()
            emit({"is_leader": obj._isLeader(), "leader": str(leader) if leader else ""})
        elif op == "load":
            emit(_load(obj, FAIL_REASON, int(cmd["proposers"]), float(cmd.get("warmup_s", 1)),
                       float(cmd["seconds"]), int(cmd.get("size", 100))))
        else:
            emit({"error": f"unknown op {op!r}"})
    obj.destroy()
    return 0


def _load(obj: Any, fail_reason: Any, proposers: int, warmup: float, seconds: float,
          size: int) -> dict[str, Any]:
    """``proposers`` commands kept outstanding by this (the main) thread: it issues a command
    whenever one of the outstanding ones completes (a semaphore released by the callback, which
    PySyncObj runs in its own thread once the command is applied here)."""
    start = time.monotonic()
    measure_from = start + warmup
    measure_to = measure_from + seconds
    hist = Histogram()
    errors: Counter[str] = Counter()
    commits = 0
    window = threading.Semaphore(proposers)
    pad = b"x" * (size - 16)
    names = {v: k for k, v in vars(fail_reason).items() if k.isupper()}

    def done(t0: float, err: object) -> None:
        nonlocal commits
        t1 = time.monotonic()
        if err == fail_reason.SUCCESS:
            if measure_from <= t1 < measure_to:
                commits += 1
                hist.add(t1 - t0)
        else:
            errors[names.get(err, str(err))] += 1
        window.release()

    seq = 0
    while True:
        window.acquire()
        t0 = time.monotonic()
        if t0 >= measure_to:
            break
        seq += 1
        entry = struct.pack(">IIQ", seq % KEYS, 0, seq) + pad
        obj.put(entry, callback=lambda _res, err, t0=t0: done(t0, err))
    # let the outstanding commands finish (they no longer count) before answering
    for _ in range(proposers - 1):
        if not window.acquire(timeout=max(0.1, measure_to + 30 - time.monotonic())):
            break
    return {"led": 1, "commits": commits, "seconds": seconds, "hist": hist.to_json(),
            "errors": dict(errors), "rpcs_sent": 0}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _pid() -> int:
    import os

    return os.getpid()


# -- the driver -------------------------------------------------------------------------------
def run(*, proposers: int, seconds: float, warmup: float, size: int = 100,
        log_dir: Path, python: str = sys.executable) -> dict[str, Any]:
    """Start 3 PySyncObj nodes, run the load on the leader, stop them; the result dict has
    ``commits_per_s``, ``p50_ms``, ``p99_ms``, per-node CPU % and the raw histogram."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = []
    try:
        for i, addr in enumerate(addrs):
            others = [a for a in addrs if a != addr]
            nodes.append(NodeProcess(f"pysyncobj{i + 1}",
                                     [python, str(Path(__file__).resolve()), "--node", addr,
                                      *others], log_dir / f"pysyncobj{i + 1}.log"))
        for n in nodes:
            n.start_nowait()
        for n in nodes:
            n.wait_ready(timeout=60)
        leader = None
        deadline = time.monotonic() + 30
        while leader is None and time.monotonic() < deadline:
            for n in nodes:
                if n.request({"op": "status"}).get("is_leader"):
                    leader = n
                    break
            else:
                time.sleep(0.1)
        if leader is None:
            raise RuntimeError("PySyncObj elected no leader in 30 s")
        leader.send({"op": "load", "proposers": proposers, "warmup_s": warmup,
                     "seconds": seconds, "size": size})
        time.sleep(warmup)
        win = Window([n.pid for n in nodes])
        time.sleep(seconds)
        window = win.close()
        reply = leader.recv(timeout=seconds + 60)
    finally:
        for n in nodes:
            n.stop()
    hist = Histogram.from_json(reply["hist"])
    return {
        "commits": reply["commits"],
        "commits_per_s": reply["commits"] / reply["seconds"],
        "p50_ms": hist.percentile_ms(0.50),
        "p99_ms": hist.percentile_ms(0.99),
        "mean_ms": hist.mean_ms(),
        "errors": reply["errors"],
        "proposers": proposers,
        "seconds": reply["seconds"],
        "leader_index": nodes.index(leader),
        "hist": reply["hist"],
        **window,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--node":
        return node_main(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proposers", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/nuraft-bench-logs"))
    args = parser.parse_args()
    result = run(proposers=args.proposers, seconds=args.seconds, warmup=args.warmup,
                 size=args.size, log_dir=args.log_dir)
    result.pop("hist")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
