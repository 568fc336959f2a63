#!/usr/bin/env python3
"""One benchmark node: a :class:`~nuraft_mesg.Manager` in its own process, driven over a
JSON-lines control channel (started by ``benchmarks/run.py``; not meant to be run by hand).

::

    python benchmarks/node.py --uuid U [--port P] [--data-dir DIR] [--heartbeat-ms 100] ...

Only the public API is used: ``Manager``, ``ManagerConfig``, ``InMemoryApplication``,
``RaftParams``, ``create_group`` / ``add_member`` / ``append_entries`` / ``group()``.  The node
prints ``{"event": "ready", "port": P, "pid": PID}`` on stdout once it serves, then reads one
JSON command per line on stdin and answers each with one JSON line (``{"error": ...}`` on a
failure); commands run one at a time.  EOF on stdin stops the node cleanly.

Commands (``op``):

``peers``      ``directory``: {uuid: "host:port"} -- merged into the peer directory.
``create``     ``groups``, ``peers``, ``concurrency``, ``deadline_s`` -- create each group here
               (this node leads it) and add every peer; stops at the deadline and reports how
               many groups were complete (all members in the committed config), with the
               completion times.
``load``       ``groups``, ``proposers`` (per group), ``warmup_s``, ``seconds``, ``size`` --
               for every listed group this node *leads*, run ``proposers`` concurrent tasks,
               each calling ``append_entries(gid, [one size-byte entry])`` in a loop.  Only
               calls that complete inside the measured window count; the answer has the
               commits, a latency histogram (call to result: committed on a quorum and applied
               here) and the Raft requests this node sent in the window.  With ``read``
               (a mode: "linearizable", "lease", "stale") the tasks call ``read(gid, key,
               mode=...)`` instead, on the groups this node leads, or with ``role``
               "follower" on those it hosts and does not lead (follower reads).
``status``     counts over every hosted group: hosted, led, with a known leader, leader
               changes seen.
``leader``     ``group`` -- this node's view of one group (leader, term, commit, applied).
``cprofile``   ``action``: "start" | "stop", ``path`` -- cProfile of this process (the
               alternative to py-spy; it slows the node down several times).

The state machine is :class:`BenchStateMachine` (a dict keyed by the entry's first 8 bytes,
one of ``benchlib.KEYS`` keys: the same work as the PySyncObj side of the comparison).
Without ``--data-dir`` the logs are in memory (the fair comparison with PySyncObj, which
keeps its log in memory by default); with it, the durable SQLite store (needed to restart a
killed node, workload 4).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import random
import struct
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import KEYS, Histogram, apply_gc_setting

from nuraft_mesg import (
    Busy,
    InMemoryApplication,
    Manager,
    ManagerConfig,
    NotLeader,
    RaftError,
    RaftParams,
)
from nuraft_mesg.raft.types import ClusterConfig
from nuraft_mesg.storage.interfaces import StateMachine

GROUP_TYPE = "bench"
BUSY_BACKOFF = (0.05, 2.0)
"""A proposer refused Busy waits 50 ms, doubling up to 2 s (x 0.5-1.5 jitter), until a write
of its is admitted again."""
log = logging.getLogger("bench.node")


class BenchStateMachine(StateMachine):
    """Applies an entry by storing it in a dict under its first 8 bytes."""

    __slots__ = ("count", "data", "last")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.last = 0
        self.count = 0

    def commit(self, index: int, data: bytes) -> bytes:
        self.last = index
        self.count += 1
        self.data[data[:8]] = data
        return b""

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        self.last = index

    def last_commit_index(self) -> int:
        return self.last

    def query(self, query: bytes) -> bytes:
        """The entry last stored under the 8-byte key ``query`` (b"" if none)."""
        return self.data.get(query[:8], b"")


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.directory: dict[str, str] = {}
        self.app = InMemoryApplication(args.uuid, self.directory,
                                       state_machine_factory=BenchStateMachine)
        defaults = RaftParams()
        self.params = RaftParams(
            heartbeat_interval_ms=args.heartbeat_ms or defaults.heartbeat_interval_ms,
            election_timeout_ms=(tuple(args.election_ms) if args.election_ms
                                 else defaults.election_timeout_ms),
            max_pending_proposals=args.max_pending or defaults.max_pending_proposals,
            lease_reads=args.lease_reads,
        )
        self.mgr: Manager | None = None
        self.profiler: cProfile.Profile | None = None

    # -- the control channel -------------------------------------------------------------------
    async def run(self) -> None:
        args = self.args
        config = ManagerConfig(server_uuid=args.uuid, host="127.0.0.1", port=args.port,
                               default_group_type=GROUP_TYPE,
                               data_dir=str(args.data_dir) if args.data_dir else None)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self.out = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        async with Manager(config, self.app) as mgr:
            self.mgr = mgr
            self.directory[args.uuid] = f"127.0.0.1:{mgr.port}"
            mgr.register_group_type(GROUP_TYPE, self.params)
            await self.emit({"event": "ready", "port": mgr.port, "pid": os.getpid(),
                             "params": {"heartbeat_ms": self.params.heartbeat_interval_ms,
                                        "max_pending": self.params.max_pending_proposals,
                                        "election_ms": list(self.params.election_timeout_ms)}})
            buf = b""
            while True:
                chunk = await stdin.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        await self.dispatch(json.loads(line))
        if self.profiler is not None:
            self.profiler.disable()

    async def emit(self, obj: dict[str, Any]) -> None:
        await self.out.send_all(json.dumps(obj).encode() + b"\n")

    async def dispatch(self, cmd: dict[str, Any]) -> None:
        op = cmd.get("op")
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            await self.emit({"error": f"unknown op {op!r}"})
            return
        try:
            reply = await handler(cmd)
        except Exception as exc:
            log.exception("op %s failed", op)
            await self.emit({"error": f"{op}: {type(exc).__name__}: {exc}"})
            return
        await self.emit(reply)

    # -- operations -----------------------------------------------------------------------------
    async def op_peers(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.directory.update(cmd["directory"])
        return {"ok": True}

    async def op_create(self, cmd: dict[str, Any]) -> dict[str, Any]:
        mgr = self.mgr
        assert mgr is not None
        groups: list[str] = cmd["groups"]
        peers: list[str] = cmd["peers"]
        limiter = trio.CapacityLimiter(int(cmd.get("concurrency", 64)))
        start = trio.current_time()
        deadline = start + float(cmd.get("deadline_s", 60.0))
        done: list[float] = []
        errors: Counter[str] = Counter()

        async def create_one(gid: str) -> None:
            async with limiter:
                while True:
                    try:
                        await mgr.create_group(gid, GROUP_TYPE)
                        break
                    except RaftError as exc:
                        errors[f"create_group:{type(exc).__name__}"] += 1
                        await trio.sleep(0.05)
                for peer in peers:
                    while peer not in {s.endpoint for s in mgr.get_srv_config_all(gid)}:
                        try:
                            await mgr.add_member(gid, peer)
                        except RaftError as exc:
                            errors[f"add_member:{type(exc).__name__}"] += 1
                            # NotLeader: this node lost the group's leadership (an overloaded
                            # node misses heartbeats); wait for it to come back, do not spin
                            await trio.sleep(0.2 if isinstance(exc, NotLeader) else 0.05)
                done.append(trio.current_time() - start)

        timed_out = True
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for gid in groups:
                    nursery.start_soon(create_one, gid)
            timed_out = False
        return {"created": len(done), "requested": len(groups), "timed_out": timed_out,
                "elapsed": trio.current_time() - start, "done_at": [round(t, 3) for t in done],
                "errors": dict(errors)}

    async def op_load(self, cmd: dict[str, Any]) -> dict[str, Any]:
        mgr = self.mgr
        assert mgr is not None
        hosted = set(mgr.group_ids)
        leading = cmd.get("role", "leader") == "leader"
        led = [g for g in cmd["groups"]
               if g in hosted and mgr.group(g).is_leader == leading]
        read_mode: str | None = cmd.get("read")
        proposers = int(cmd["proposers"])
        size = int(cmd.get("size", 100))
        now = trio.current_time()
        measure_from = now + float(cmd.get("warmup_s", 1.0))
        measure_to = measure_from + float(cmd["seconds"])
        hist = Histogram()
        errors: Counter[str] = Counter()
        commits = 0
        sent: dict[str, int] = {}

        def rpcs_sent() -> int:
            total = 0
            for g in led:
                with contextlib.suppress(RaftError):
                    total += mgr.group(g).statistics().messages_sent
            return total

        async def proposer(gid: str, pid: int) -> None:
            nonlocal commits
            key = struct.pack(">II", pid % KEYS, 0)
            pad = b"x" * (size - 16)
            seq = 0
            backoff = BUSY_BACKOFF[0]
            rng = random.Random(pid)
            while True:
                t0 = trio.current_time()
                if t0 >= measure_to:
                    return
                seq += 1
                entry = key + struct.pack(">Q", seq) + pad
                try:
                    if read_mode is not None:
                        await mgr.read(gid, key, mode=read_mode)
                    else:
                        await mgr.append_entries(gid, [entry])
                except Busy:
                    # admission control: back off exponentially (with jitter), as a client
                    # should; an eager retry costs the leader as much as a write
                    errors["Busy"] += 1
                    await trio.sleep(backoff * (0.5 + rng.random()))
                    backoff = min(backoff * 2, BUSY_BACKOFF[1])
                    continue
                except NotLeader:
                    # leadership moved (or was lost): back off, do not spin on the node
                    errors["NotLeader"] += 1
                    await trio.sleep(0.1)
                    continue
                except RaftError as exc:
                    errors[type(exc).__name__] += 1
                    await trio.sleep(0.05)
                    continue
                backoff = BUSY_BACKOFF[0]
                t1 = trio.current_time()
                if measure_from <= t1 < measure_to:
                    commits += 1
                    hist.add(t1 - t0)

        async def pipelined(gid: str) -> None:
            # one task keeps ``proposers`` writes in flight (Manager.pipeline): the pattern
            # of PySyncObj's benchmark (a callback window), without a task per write
            nonlocal commits
            pad = b"x" * (size - 16)
            seq = 0
            backoff = BUSY_BACKOFF[0]

            def finished(t0: float) -> Callable[[list[bytes] | RaftError], None]:
                def on_done(result: list[bytes] | RaftError) -> None:
                    nonlocal commits
                    if isinstance(result, RaftError):
                        errors[type(result).__name__] += 1
                        return
                    t1 = trio.current_time()
                    if measure_from <= t1 < measure_to:
                        commits += 1
                        hist.add(t1 - t0)
                return on_done

            async with mgr.pipeline(gid, window=proposers) as pipe:
                while (t0 := trio.current_time()) < measure_to:
                    seq += 1
                    entry = struct.pack(">IIQ", seq % KEYS, 0, seq) + pad
                    try:
                        await pipe.append([entry], finished(t0))
                    except Busy:
                        errors["Busy"] += 1
                        await trio.sleep(backoff)
                        backoff = min(backoff * 2, BUSY_BACKOFF[1])
                        continue
                    except RaftError as exc:
                        errors[type(exc).__name__] += 1
                        await trio.sleep(0.05)
                        continue
                    backoff = BUSY_BACKOFF[0]

        async def sample_stats() -> None:
            await trio.sleep_until(measure_from)
            sent["start"] = rpcs_sent()
            sent["batches_start"] = mgr.peer_statistics().batches
            await trio.sleep_until(measure_to)
            sent["end"] = rpcs_sent()
            sent["batches_end"] = mgr.peer_statistics().batches

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_stats)
            for gid in led:
                if cmd.get("pipelined"):
                    nursery.start_soon(pipelined, gid)
                    continue
                for i in range(proposers):
                    nursery.start_soon(proposer, gid, i)
        return {"led": len(led), "commits": commits, "seconds": measure_to - measure_from,
                "hist": hist.to_json(), "errors": dict(errors),
                "rpcs_sent": sent.get("end", 0) - sent.get("start", 0),
                "batches_sent": sent.get("batches_end", 0) - sent.get("batches_start", 0)}

    async def op_status(self, cmd: dict[str, Any]) -> dict[str, Any]:
        mgr = self.mgr
        assert mgr is not None
        hosted = led = with_leader = changes = 0
        for gid in mgr.group_ids:
            try:
                st = mgr.group(gid).statistics()
            except RaftError:
                continue
            hosted += 1
            led += st.is_leader
            with_leader += bool(st.leader_id)
            changes += st.leader_changes
        return {"hosted": hosted, "led": led, "with_leader": with_leader,
                "leader_changes": changes, "quiet": mgr.quiet_groups,
                "requests_sent": mgr.peer_statistics().sent,
                "batches_sent": mgr.peer_statistics().batches}

    async def op_leader(self, cmd: dict[str, Any]) -> dict[str, Any]:
        mgr = self.mgr
        assert mgr is not None
        gid = cmd["group"]
        if gid not in mgr.group_ids:
            return {"hosted": False}
        st = mgr.group(gid).statistics()
        return {"hosted": True, "is_leader": st.is_leader, "leader": st.leader_id,
                "term": st.term, "commit": st.commit_index, "applied": st.applied_index,
                "last": st.last_log_index}

    async def op_cprofile(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["action"] == "start":
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        else:
            assert self.profiler is not None
            self.profiler.disable()
            self.profiler.dump_stats(cmd["path"])
            self.profiler = None
        return {"ok": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uuid", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, help="use the durable SQLite store here")
    parser.add_argument("--heartbeat-ms", type=int, default=0, help="default: RaftParams'")
    parser.add_argument("--election-ms", type=int, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--max-pending", type=int, default=0,
                        help="RaftParams.max_pending_proposals (default: RaftParams')")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--lease-reads", action="store_true",
                        help="RaftParams.lease_reads (for the lease reads of workload 7)")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    apply_gc_setting()
    try:
        trio.run(Node(args).run)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
