"""Exactly-once writes across a kill -9 of the leader, with real processes: three
``nuraft-mesg server --sessions`` nodes (the durable store, snapshots every 8 entries).  The
leader is frozen after it applied a session write and before its answer leaves, then killed
with SIGKILL; the ExternalClient session resends the write (same seq) to the survivors, gets
the first application's result, and every replica's state machine applied it exactly once --
also after every node was killed and restarted from its stored snapshot and log."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest
import trio

from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import RaftError
from nuraft_mesg.sessions import Kind, SessionStateMachine, Status, decode_result, encode_request
from tests.storage.freezing_node import FREEZE
from tests.storage.test_kill9 import (
    Cluster,
    Node,
    final_write,
    read_back,
    three_nodes,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")

FREEZING_NODE = Path(__file__).with_name("freezing_node.py")


async def leader_of(client: ExternalClient, cluster: Cluster) -> Node:
    for node in cluster.nodes:
        status = await client.status(node.uuid, (cluster.group_id,))
        if any(g.is_leader for g in status.groups):
            return node
    raise AssertionError("no leader")


async def wait_for_file(path: Path) -> None:
    """Until another process created ``path`` (polled: no event crosses processes)."""
    while True:
        if path.exists():  # noqa: ASYNC240 - a stat, in a test
            return
        await trio.sleep(0.02)


async def resend(client: ExternalClient, cluster: Cluster, entry: bytes) -> bytes:
    """Send ``entry`` as it is (a client's retry) until some node's leader answers."""
    while True:
        for node in cluster.nodes:
            try:
                (raw,) = await client.append_entries(cluster.group_id, [entry], node.uuid)
                return raw
            except RaftError:
                await trio.sleep(0.1)  # retry back-off while the nodes elect a leader


async def test_a_write_retried_after_the_leader_is_killed_is_applied_once(
        tmp_path: Path) -> None:
    nodes = three_nodes(tmp_path)
    cluster = Cluster(nodes, str(uuid.uuid4()), script=FREEZING_NODE,
                      extra_args=["--sessions", "--snapshot-distance", "8",
                                  "--reserved-log-items", "2"])
    peers = {n.uuid: n.address for n in nodes}
    try:
        with trio.fail_after(90):
            await cluster.bootstrap(nodes)
            async with (ExternalClient(peers, request_timeout=5.0) as client,
                        client.session(retry_timeout=30.0) as s):
                for i in range(10):
                    assert await s.append_entry(cluster.group_id, b"set k%d %d" % (i, i)) \
                        == b"OK"
                leader = await leader_of(client, cluster)
                (leader.data_dir / "freeze").touch()
                answer: list[bytes] = []

                async def write() -> None:
                    answer.append(await s.append_entry(cluster.group_id, FREEZE))

                retries_before = s.retries
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write)
                    await wait_for_file(leader.data_dir / "frozen")
                    await cluster.kill(leader)  # applied there, never answered
                    (leader.data_dir / "freeze").unlink()
                assert answer == [b"OK"]
                assert s.retries > retries_before  # it was resent, with the same seq
                freeze_seq = s._next_seq - 1
                for i in range(10, 20):  # past another snapshot
                    assert await s.append_entry(cluster.group_id, b"set k%d %d" % (i, i)) \
                        == b"OK"
                last_seq = s._next_seq - 1
                epoch = s._epochs[cluster.group_id]

                await cluster.start(leader)
                await cluster.wait_ready(leader)
                await cluster.kill_everyone(nodes)
                # After every node restarted from its snapshot and log, the session is
                # still known: the last write (still unacknowledged) is answered from it;
                # the frozen one (acknowledged since) is refused, not applied again.
                last = encode_request(Kind.WRITE, s.client_id, epoch, last_seq,
                                      last_seq - 1, b"set k19 19")
                assert decode_result(await resend(client, cluster, last)) \
                    == (Status.OK, b"OK")
                frozen = encode_request(Kind.WRITE, s.client_id, epoch, freeze_seq,
                                        freeze_seq - 1, FREEZE)
                assert decode_result(await resend(client, cluster, frozen)) \
                    == (Status.STALE, b"")
            await final_write(cluster, peers)  # and every node applied the leader's commit
            for node in nodes:
                await cluster.stop(node)
    finally:
        await cluster.kill_leftovers()

    for node in nodes:
        assert "restored snapshot" in node.log_path.read_text(errors="replace"), node.name
        stored = read_back(node, cluster.group_id, SessionStateMachine)
        assert stored.snapshot is not None and stored.log_start > 1, node.name
        assert stored.history.count(FREEZE) == 1, node.name
        assert stored.history.count(b"set k19 19") == 1, node.name
        writes = [d for d in stored.history if d.startswith(b"set k")]
        assert writes == [b"set k%d %d" % (i, i) for i in range(20)], node.name
