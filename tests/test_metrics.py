"""Per-group counters (GroupStatistics) and their Prometheus export (nuraft_mesg.metrics).

nuraft_mesg's RAFTGroup metrics (inventory §4.4): ``group_steps`` counts the Raft requests a
group receives, ``group_sends`` the requests it sends, ``append_entries_latency_us`` the time
to handle an AppendEntries request.  GroupStatistics adds term, commit index and leader changes.
"""

from __future__ import annotations

import urllib.request
import uuid

import pytest
import trio

from nuraft_mesg.group import GroupStatistics
from nuraft_mesg.testing.local import LocalCluster, LocalNode


def _stats(node: LocalNode, gid: str) -> GroupStatistics:
    return node.mgr.group(gid).statistics()


async def _three_node_group(cluster: LocalCluster, *, priority: int = 1) -> str:
    n1, n2, n3 = cluster.nodes
    gid = str(uuid.uuid4())
    await n1.mgr.create_group(gid, "test")
    await n1.mgr.add_member(gid, n2.uuid, priority=priority)
    await n1.mgr.add_member(gid, n3.uuid, priority=priority)
    commit = _stats(n1, gid).commit_index
    await cluster.wait_applied(gid, commit)
    return gid


async def test_single_node_group_sends_and_receives_nothing() -> None:
    with trio.fail_after(20):
        async with LocalCluster.open(1) as cluster:
            (n1,) = cluster.nodes
            gid = str(uuid.uuid4())
            await n1.mgr.create_group(gid, "test")
            # The role event is counted when its Ready is processed, just after the core
            # changed role (a checkpoint later): wait for it rather than race it.
            await cluster.wait_until(lambda: _stats(n1, gid).leader_changes > 0)
            before = _stats(n1, gid)
            assert before.is_leader and before.leader_id == n1.uuid
            assert before.term >= 1
            assert before.leader_changes == 1
            for k in range(5):
                assert await n1.mgr.append_entries(gid, [f"set k{k} {k}".encode()]) == [b"OK"]
            after = _stats(n1, gid)
            assert after.commit_index == before.commit_index + 5
            assert after.last_log_index == after.commit_index == after.applied_index
            assert after.term == before.term
            assert after.leader_changes == 1
            assert (after.messages_sent, after.messages_received, after.messages_dropped) == (
                0, 0, 0
            )
            assert (after.append_requests, after.append_latency_us_total) == (0, 0)


async def test_counters_move_with_writes() -> None:
    """Writes move the leader's sends, the followers' steps and append latencies; every
    request counted as received was counted as sent by someone (replies are not steps)."""
    with trio.fail_after(30):
        async with LocalCluster.open(3) as cluster:
            n1 = cluster.nodes[0]
            gid = await _three_node_group(cluster)
            before = {n.name: _stats(n, gid) for n in cluster.nodes}
            for k in range(10):
                await n1.mgr.append_entries(gid, [f"set k{k} {k}".encode()])
            commit = _stats(n1, gid).commit_index
            await cluster.wait_applied(gid, commit)
            after = {n.name: _stats(n, gid) for n in cluster.nodes}

            lead_b, lead_a = before["node1"], after["node1"]
            assert lead_a.commit_index == lead_b.commit_index + 10
            assert lead_a.is_leader and lead_a.leader_changes == 1
            assert lead_a.messages_sent >= lead_b.messages_sent + 2  # appends to both followers
            for name in ("node2", "node3"):
                b, a = before[name], after[name]
                assert not a.is_leader and a.leader_id == n1.uuid
                assert a.term == lead_a.term
                assert a.applied_index >= lead_a.commit_index - 1 >= b.applied_index + 9
                assert a.leader_changes == 1
                assert a.messages_received > b.messages_received
                assert a.append_requests > b.append_requests
                assert a.append_latency_us_total > b.append_latency_us_total > 0
                # Every AppendEntries handled is a received request.
                assert a.append_requests <= a.messages_received

            received = sum(s.messages_received for s in after.values())
            sent = sum(s.messages_sent for s in after.values())
            assert 0 < received <= sent


async def test_leader_changes_and_term_after_failover() -> None:
    """A failover is one leader change on each survivor (however many votes it took)."""
    with trio.fail_after(30):
        async with LocalCluster.open(3) as cluster:
            n1, n2, n3 = cluster.nodes
            gid = await _three_node_group(cluster, priority=100)
            before = {n.name: _stats(n, gid) for n in (n2, n3)}
            assert all(s.leader_changes == 1 for s in before.values())

            await cluster.kill(n1)
            new = await cluster.wait_leader(gid, among=[n2, n3])
            await new.mgr.append_entries(gid, [b"set after failover"])
            await cluster.wait_until(
                lambda: all(_stats(n, gid).leader_changes >= 2 for n in (n2, n3))
            )
            for n in (n2, n3):
                s = _stats(n, gid)
                assert s.term > before[n.name].term
                assert s.leader_changes == 2, (n.name, s)

            # A restarted node counts from its restart, like nuraft_mesg's per-group metrics.
            await cluster.restart(n1)
            await cluster.wait_until(lambda: _stats(n1, gid).leader_changes >= 1)
            assert _stats(n1, gid).leader_changes == 1
            assert _stats(n1, gid).leader_id == new.uuid


# -- Prometheus export --------------------------------------------------------------------------
def _families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels -> value} of every sample in the exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _key(node: LocalNode, gid: str) -> tuple[tuple[str, str], ...]:
    return (("group", gid), ("server", node.uuid))


async def test_prometheus_exposition_matches_statistics() -> None:
    pytest.importorskip("prometheus_client")
    from nuraft_mesg.metrics import render

    with trio.fail_after(30):
        async with LocalCluster.open(3) as cluster:
            n1, n2, n3 = cluster.nodes
            gid = await _three_node_group(cluster)
            for k in range(3):
                await n1.mgr.append_entries(gid, [f"set k{k} {k}".encode()])
            await cluster.wait_applied(gid, _stats(n1, gid).commit_index)

            text = render([n.mgr for n in cluster.nodes]).decode()
            # Read right after rendering, with no checkpoint in between: nothing moved.
            stats = {n.name: _stats(n, gid) for n in cluster.nodes}
            fams = _families(text)
            assert "# TYPE nuraft_mesg_group_steps_total counter" in text
            assert "# TYPE nuraft_mesg_group_append_latency_seconds summary" in text
            for n in cluster.nodes:
                s, key = stats[n.name], _key(n, gid)
                assert fams["nuraft_mesg_group_steps_total"][key] == s.messages_received
                assert fams["nuraft_mesg_group_sends_total"][key] == s.messages_sent
                assert fams["nuraft_mesg_group_dropped_total"][key] == s.messages_dropped
                assert fams["nuraft_mesg_group_leader_changes_total"][key] == s.leader_changes
                assert fams["nuraft_mesg_group_term"][key] == s.term
                assert fams["nuraft_mesg_group_commit_index"][key] == s.commit_index
                assert fams["nuraft_mesg_group_last_log_index"][key] == s.last_log_index
                assert fams["nuraft_mesg_group_applied_index"][key] == s.applied_index
                assert fams["nuraft_mesg_group_is_leader"][key] == (1 if n is n1 else 0)
                assert fams["nuraft_mesg_group_append_latency_seconds_count"][key] == (
                    s.append_requests
                )
                assert fams["nuraft_mesg_group_append_latency_seconds_sum"][key] == (
                    pytest.approx(s.append_latency_us_total / 1e6)
                )
            assert fams["nuraft_mesg_group_steps_total"][_key(n2, gid)] > 0
            assert fams["nuraft_mesg_group_append_latency_seconds_sum"][_key(n3, gid)] > 0


async def test_serve_metrics_over_http_from_another_thread() -> None:
    """prometheus_client's HTTP server scrapes from its own thread: the collector takes its
    snapshot in the trio thread, and follows the live nodes of a cluster."""
    pytest.importorskip("prometheus_client")
    from nuraft_mesg.metrics import serve_metrics

    with trio.fail_after(30):
        async with LocalCluster.open(2) as cluster:
            n1, n2 = cluster.nodes
            gid = str(uuid.uuid4())
            await n1.mgr.create_group(gid, "test")
            await n1.mgr.add_member(gid, n2.uuid)
            await n1.mgr.append_entries(gid, [b"set a 1"])

            server, _thread = serve_metrics(
                lambda: [n.mgr for n in cluster.nodes if n.up], port=0
            )
            url = f"http://127.0.0.1:{server.server_port}/metrics"

            def scrape() -> str:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    body: bytes = resp.read()
                    return body.decode()

            try:
                fams = _families(await trio.to_thread.run_sync(scrape))
                assert fams["nuraft_mesg_group_is_leader"][_key(n1, gid)] == 1
                assert fams["nuraft_mesg_group_is_leader"][_key(n2, gid)] == 0
                assert fams["nuraft_mesg_group_commit_index"][_key(n2, gid)] >= 1

                await cluster.kill(n2)
                fams = _families(await trio.to_thread.run_sync(scrape))
                assert _key(n2, gid) not in fams["nuraft_mesg_group_term"]
                assert _key(n1, gid) in fams["nuraft_mesg_group_term"]
            finally:
                server.shutdown()
                server.server_close()


def test_registering_does_not_scrape_and_a_finished_run_reports_nothing() -> None:
    pytest.importorskip("prometheus_client")
    from nuraft_mesg.metrics import ManagerCollector, make_registry, render

    calls = 0

    def managers() -> list[object]:
        nonlocal calls
        calls += 1
        return []

    async def inside() -> ManagerCollector:
        make_registry(managers)  # type: ignore[arg-type]
        assert calls == 0  # describe() named the metrics: registering did not collect
        assert b"nuraft_mesg_group_term" in render(managers)  # type: ignore[arg-type]
        assert calls == 1
        return ManagerCollector(managers)  # type: ignore[arg-type]

    collector = trio.run(inside)
    assert collector.snapshot() == []  # the run is over: nothing, and no error
    assert calls == 1
