"""A local multi-node demo on loopback: the project's "main job".

Three nodes (three Managers in this process, each with its own RaftStep server on 127.0.0.1),
a few groups with their leaders spread over the nodes, writes to every group, then the node
leading the first group is killed: the demo shows the failover, keeps writing, restarts the
node, lets it catch up, and prints a status table at each stage.

Every node keeps its groups in the durable default store (``<data dir>/<node>/nuraft.db``, see
``docs/storage.md``): the restarted node reloads its log, term, vote and config from disk.
The data dir is a temporary directory, removed at the end, unless ``--data-dir`` names one.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable

import trio

from nuraft_mesg.errors import RaftError
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.testing.local import LocalCluster

GROUP_TYPE = "demo"
PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))


def status_table(cluster: LocalCluster, groups: list[str], *, lag: bool = False) -> str:
    """One row per group: leader, term, commit index, applied index per node, members.

    The row shows the view of the node with the best claim (a leader of the highest term).
    ``lag`` adds, per node, how far its applied index is behind that commit index.  A node
    shows "down" when it is not running and "-" when it does not host the group.
    """
    names = {n.uuid: n.name for n in cluster.nodes}
    header = ["group", "leader", "term", "commit", "applied " + "/".join(names.values()),
              "members"]
    if lag:
        header.append("lag " + "/".join(names.values()))
    rows = [tuple(header)]
    for gid in groups:
        hosts = [n for n in cluster.nodes if n.manager is not None and gid in n.manager.group_ids]
        if not hosts:
            rows.append((gid[:8], *["-"] * (len(header) - 1)))
            continue
        stats = [(n, n.mgr.group(gid).statistics()) for n in hosts]
        best_node, best = max(stats, key=lambda p: (p[1].is_leader, p[1].term, p[1].commit_index))
        members = ",".join(names.get(r.peer_id, r.peer_id[:8])
                           for r in best_node.mgr.group(gid).cluster_config())
        absent = {n.uuid: "-" if n.manager is not None else "down" for n in cluster.nodes}
        per_node = {n.uuid: str(st.applied_index) for n, st in stats}
        applied = "/".join(per_node.get(n.uuid, absent[n.uuid]) for n in cluster.nodes)
        leader = names.get(best.leader_id, "?") if best.leader_id else "none"
        row = [gid[:8], leader, str(best.term), str(best.commit_index), applied, members]
        if lag:
            behind = {n.uuid: str(max(0, best.commit_index - st.applied_index))
                      for n, st in stats}
            row.append("/".join(behind.get(n.uuid, absent[n.uuid]) for n in cluster.nodes))
        rows.append(tuple(row))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def demo(n_nodes: int = 3, n_groups: int = 3, writes: int = 10,
               out: Callable[[str], None] = print, data_dir: str | None = None) -> None:
    groups = [str(uuid.uuid4()) for _ in range(n_groups)]
    with trio.fail_after(25):
        async with LocalCluster.open(n_nodes, group_types={GROUP_TYPE: PARAMS},
                                     default_group_type=GROUP_TYPE,
                                     data_dir=data_dir) as cluster:
            nodes = cluster.nodes
            out(f"started {n_nodes} nodes: " + ", ".join(
                f"{n.name}=127.0.0.1:{n.port}" for n in nodes))
            if data_dir is not None:
                out(f"durable stores in {data_dir}/<node>/nuraft.db")
            for k, gid in enumerate(groups):
                owner = nodes[k % n_nodes]
                await owner.mgr.create_group(gid, GROUP_TYPE)
                for other in nodes:
                    if other is not owner:
                        # Equal priorities: any survivor may take over at once.
                        await owner.mgr.add_member(gid, other.uuid, priority=100)
                out(f"group {gid[:8]} created on {owner.name}; members added")
            for k, gid in enumerate(groups):
                owner = nodes[k % n_nodes]
                for w in range(writes):
                    await owner.mgr.append_entries(gid, [f"set key{w} v{w}".encode()])
            out(f"\n{writes} writes committed in each group\n")
            out(status_table(cluster, groups))

            victim = nodes[0]
            survivors = nodes[1:]
            out(f"\nkilling {victim.name}, leader of group {groups[0][:8]} ...")
            start = trio.current_time()
            await cluster.kill(victim)
            new_leader = await cluster.wait_leader(groups[0], among=survivors)
            took = trio.current_time() - start
            out(f"group {groups[0][:8]} failed over to {new_leader.name} in {took * 1000:.0f} ms")
            for w in range(writes):
                await new_leader.mgr.append_entries(groups[0], [f"set after{w} {w}".encode()])
            out(f"{writes} more writes committed while {victim.name} is down\n")
            out(status_table(cluster, groups))

            out(f"\nrestarting {victim.name} on port {victim.port} ...")
            await cluster.restart(victim)
            for gid in groups:
                leader = await cluster.wait_leader(gid)
                await cluster.wait_applied(gid, leader.mgr.group(gid).statistics().commit_index)
            out(f"{victim.name} rejoined its groups and caught up\n")
            out(status_table(cluster, groups))
    out("\ndemo finished")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nuraft-mesg demo", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--writes", type=int, default=10)
    parser.add_argument("--data-dir", help="keep the nodes' durable stores here "
                        "(default: a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    peers_log = logging.getLogger("nuraft_mesg.transport.peers")
    if not peers_log.isEnabledFor(logging.INFO):
        # The demo kills a node on purpose: its peers' (throttled) send failures are expected
        # and would only clutter the tables.  `nuraft-mesg -v demo` shows them.
        peers_log.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="nuraft-demo-") as tmp:
        interrupted = trio.run(run_until_interrupted, demo, args.nodes, args.groups,
                               args.writes, print, args.data_dir or tmp)
    if interrupted:
        print("\ninterrupted: every node shut down cleanly", file=sys.stderr)
        return 130
    return 0


async def run_until_interrupted(fn: Callable[..., Awaitable[object]], *args: object) -> bool:
    """Run ``fn(*args)``; Ctrl-C (SIGINT) or SIGTERM cancels it, so every nursery unwinds
    in order instead of a KeyboardInterrupt landing in whichever task happens to run.
    Returns True if a signal ended it."""
    interrupted = False
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            nonlocal interrupted
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

        async def main() -> None:
            try:
                await fn(*args)
            except* RaftError:
                # A call that raced with the shutdown (its group stopped before the caller
                # reached a checkpoint) fails with Cancelled/Failed: expected after a signal.
                if not interrupted:
                    raise
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        nursery.start_soon(main)
    return interrupted
