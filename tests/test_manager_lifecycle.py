"""Manager lifecycle, routing of RaftStep, logging, and the demo's Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from nuraft_mesg import InMemoryApplication, Manager, ManagerConfig, RaftParams, to_server_id
from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport.base import Status, StepHandler, Transport, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc import GrpcTransport

PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))
ROOT = Path(__file__).resolve().parent.parent


def _count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


class RecordingTransport(Transport):
    """Wraps the real transport; records whether every group had stopped when the server
    was cancelled."""

    def __init__(self, inner: GrpcTransport) -> None:
        self.inner = inner
        self.manager: Manager | None = None
        self.groups_running_at_server_stop: list[str] | None = None

    async def serve(
        self, handler: StepHandler, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self.inner.serve(handler, task_status=task_status)
        finally:
            assert self.manager is not None
            self.groups_running_at_server_stop = [
                g for g, grp in self.manager._groups.items() if not grp.stopped
            ]

    async def call(
        self,
        peer: str,
        request: GroupEnvelope,
        *,
        timeout: float,  # noqa: ASYNC109 - mirrors the Transport interface
    ) -> GroupEnvelope:
        return await self.inner.call(peer, request, timeout=timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_groups_stop_before_server_and_no_task_outlives_the_manager() -> None:
    me = str(uuid.uuid4())
    app = InMemoryApplication(me)
    inner = GrpcTransport(server_uuid=me, port=0, lookup_peer=app.lookup_peer)
    transport = RecordingTransport(inner)
    before = _count_tasks()
    with trio.fail_after(20):
        async with Manager(ManagerConfig(server_uuid=me), app, transport=transport) as mgr:
            transport.manager = mgr
            mgr.register_group_type("t", PARAMS)
            gids = [str(uuid.uuid4()) for _ in range(5)]
            for gid in gids:
                await mgr.create_group(gid, "t")
                await mgr.append_entries(gid, [b"set a 1"])
            assert _count_tasks() > before
    assert transport.groups_running_at_server_stop == []
    assert _count_tasks() == before


async def test_raftstep_routing_errors() -> None:
    """Unknown group -> NOT_FOUND; wrong intended address -> INVALID_ARGUMENT; a response
    type sent as a request -> INVALID_ARGUMENT; a join for an unknown group creates it."""
    me, other = str(uuid.uuid4()), str(uuid.uuid4())
    directory: dict[str, str] = {}
    app = InMemoryApplication(me, directory)
    with trio.fail_after(20):
        async with Manager(ManagerConfig(server_uuid=me, default_group_type="t"), app) as mgr:
            mgr.register_group_type("t", PARAMS)
            directory[me] = f"127.0.0.1:{mgr.port}"
            directory[other] = f"127.0.0.1:{mgr.port}"  # a stale mapping to our port
            async with GrpcTransport(server_uuid=other, lookup_peer=app.lookup_peer) as client:
                gid = str(uuid.uuid4())
                ping = Message(MsgType.PING_REQUEST, 1, 7, mgr.server_id)
                with pytest.raises(TransportError) as err:
                    await client.call(me, GroupEnvelope(gid, "t", me, ping), timeout=2)
                assert err.value.status == Status.NOT_FOUND
                with pytest.raises(TransportError) as err:
                    await client.call(other, GroupEnvelope(gid, "t", other, ping), timeout=2)
                assert err.value.status == Status.INVALID_ARGUMENT
                await mgr.create_group(gid, "t")
                resp = Message(MsgType.PING_RESPONSE, 1, 7, mgr.server_id)
                with pytest.raises(TransportError) as err:
                    await client.call(me, GroupEnvelope(gid, "t", me, resp), timeout=2)
                assert err.value.status == Status.INVALID_ARGUMENT
                # A ping to a hosted group is answered by the group.
                reply = await client.call(me, GroupEnvelope(gid, "t", me, ping), timeout=2)
                assert reply.message.type == MsgType.PING_RESPONSE
                assert reply.group_id == gid
                # join_cluster for a group we do not host creates it (empty type -> default).
                new_gid = str(uuid.uuid4())
                cfg = b'{"servers":[{"id":7,"endpoint":"' + other.encode() + b'"}]}'
                join = Message(MsgType.JOIN_CLUSTER_REQUEST, 3, 7, mgr.server_id,
                               entries=(LogEntry(3, LogType.CONFIG, cfg),))
                reply = await client.call(me, GroupEnvelope(new_gid, "", me, join), timeout=2)
                assert reply.message.accepted
                assert new_gid in mgr.group_ids
                assert mgr.group(new_gid).leader_id == other


async def test_group_log_records_are_tagged(caplog: pytest.LogCaptureFixture) -> None:
    me = str(uuid.uuid4())
    gid = str(uuid.uuid4())
    caplog.set_level(logging.INFO, logger="nuraft_mesg")
    with trio.fail_after(20):
        async with Manager(ManagerConfig(server_uuid=me), InMemoryApplication(me)) as mgr:
            mgr.register_group_type("t", PARAMS)
            await mgr.create_group(gid, "t")
            await mgr.append_entries(gid, [b"x"])  # the BecomeLeader Ready is handled by now
    tagged = [r for r in caplog.records if getattr(r, "group", None) == gid]
    assert tagged, "no log record carried the group id"
    assert all(r.name == f"nuraft_mesg.manager.{me}" for r in tagged)


def test_server_id_is_deterministic_and_31_bit() -> None:
    u = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    # A fixed value: every node, process and Python version must agree on it.
    assert to_server_id(u) == to_server_id(u.upper())
    assert 0 <= to_server_id(u) < 2**31
    code = f"from nuraft_mesg import to_server_id; print(to_server_id({u!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, check=True)
    assert int(out.stdout) == to_server_id(u)


def test_demo_exits_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nuraft_mesg", "demo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("started 3 nodes"), first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    assert "interrupted" in err
