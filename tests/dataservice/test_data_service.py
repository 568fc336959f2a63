"""The data service beyond the C++ ports: membership changes and ALL, bindings, restarts,
size limits, handler errors and deadlines, destinations, log throttling, the transport
default."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import Counter
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

from nuraft_mesg import (
    BadRequest,
    Failed,
    InMemoryApplication,
    Manager,
    ManagerConfig,
    RaftTimeout,
    ServerNotFound,
    to_server_id,
)
from nuraft_mesg.data_service import ALL, ANY, LEADER, DataServiceHandler, _LogThrottle
from nuraft_mesg.errors import ResultCode
from nuraft_mesg.testing.local import LocalCluster, LocalNode
from nuraft_mesg.transport.base import (
    DataRequest,
    Status,
    StepHandler,
    Transport,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc import GrpcTransport

from . import GROUP_TYPE, PARAMS

ECHO = "echo"


async def _echo(data: bytes) -> bytes:
    return data


def _counting(counter: Counter[str], name: str) -> DataServiceHandler:
    async def handler(data: bytes) -> bytes:
        counter[name] += 1
        return data

    return handler


def _config(node: LocalNode, gid: str) -> set[str]:
    return {s.endpoint for s in node.mgr.get_srv_config_all(gid)}


async def _group(cluster: LocalCluster, gid: str, *members: LocalNode) -> None:
    first, *rest = members
    await first.mgr.create_group(gid, GROUP_TYPE)
    for m in rest:
        await first.mgr.add_member(gid, m.uuid)
    for m in rest:
        ctx = m.mgr.group(gid)
        await cluster.wait_until(lambda c=ctx: c.leader_id == first.uuid)  # type: ignore[misc]


def _open(n: int, **config: Any) -> AbstractAsyncContextManager[LocalCluster]:
    def configure(c: ManagerConfig) -> ManagerConfig:
        return dataclasses.replace(c, **config)

    return LocalCluster.open(n, group_types={GROUP_TYPE: PARAMS},
                             default_group_type=GROUP_TYPE, configure=configure)


async def test_all_reaches_added_members_and_not_removed_ones() -> None:
    gid = str(uuid.uuid4())
    counter: Counter[str] = Counter()
    with trio.fail_after(30):
        async with _open(4) as cluster:
            app1, app2, app3, app4 = cluster.nodes
            for n in cluster.nodes:
                assert n.mgr.bind_data_service_request(ECHO, gid, _counting(counter, n.name))
            await _group(cluster, gid, app1, app2, app3)
            ctx = app1.mgr.group(gid)
            await ctx.data_service_request_unidirectional(ALL, ECHO, b"1")
            assert counter == {"node2": 1, "node3": 1}

            await app1.mgr.add_member(gid, app4.uuid)
            await ctx.data_service_request_unidirectional(ALL, ECHO, b"2")
            assert counter == {"node2": 2, "node3": 2, "node4": 1}

            await app1.mgr.rem_member(gid, app3.uuid)
            await cluster.wait_until(lambda: app3.uuid not in _config(app1, gid))
            await ctx.data_service_request_unidirectional(ALL, ECHO, b"3")
            # app3 still runs and still has the binding, but is no longer a member.
            assert counter == {"node2": 3, "node3": 2, "node4": 2}
            with pytest.raises(ServerNotFound):
                await ctx.data_service_request_bidirectional(app3.uuid, ECHO, b"x")
            with pytest.raises(ServerNotFound):
                await ctx.data_service_request_bidirectional(to_server_id(app3.uuid), ECHO,
                                                             b"x")


async def test_bind_rules_and_a_node_without_the_data_service() -> None:
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with _open(3) as cluster:
            app1, app2, app3 = cluster.nodes
            mgr = app1.mgr
            assert mgr.bind_data_service_request(ECHO, gid, _echo)
            assert not mgr.bind_data_service_request(ECHO, gid, _echo)  # already bound
            assert not mgr.bind_data_service_request("other", gid, None)
            assert not mgr.bind_data_service_request("other", "not-a-uuid", _echo)
            assert mgr.bind_data_service_request(ECHO, str(uuid.uuid4()), _echo)  # other group
            assert mgr.data_service.unbind(ECHO, gid)
            assert not mgr.data_service.unbind(ECHO, gid)
            assert mgr.bind_data_service_request(ECHO, gid, _echo)
            assert app2.mgr.bind_data_service_request(ECHO, gid, _echo)
            await _group(cluster, gid, app1, app2, app3)

            # Turn app3's data service off (as ManagerConfig(enable_data_service=False)).
            app3.mgr.data_service.enabled = False
            assert not app3.mgr.bind_data_service_request(ECHO, gid, _echo)
            with pytest.raises(BadRequest):  # UNIMPLEMENTED on app3
                await app1.mgr.group(gid).data_service_request_bidirectional(app3.uuid, ECHO,
                                                                             b"x")
            with pytest.raises(ServerNotFound):  # app3 cannot send either
                await app3.mgr.group(gid).data_service_request_unidirectional(LEADER, ECHO,
                                                                              b"x")
            assert await app2.mgr.group(gid).data_service_request_bidirectional(
                LEADER, ECHO, b"ok") == b"ok"


async def test_disabled_by_config() -> None:
    app = InMemoryApplication(str(uuid.uuid4()))
    config = ManagerConfig(server_uuid=app.server_uuid, enable_data_service=False)
    async with Manager(config, app) as mgr:
        assert not mgr.bind_data_service_request(ECHO, str(uuid.uuid4()), _echo)
        assert not mgr.node_status().data_service


async def test_bindings_survive_restart_server() -> None:
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with _open(2) as cluster:
            app1, app2 = cluster.nodes
            assert app2.mgr.bind_data_service_request(ECHO, gid, _echo)
            await _group(cluster, gid, app1, app2)
            ctx = app1.mgr.group(gid)
            assert await ctx.data_service_request_bidirectional(app2.uuid, ECHO, b"a") == b"a"
            port = app2.mgr.port
            assert await app2.mgr.restart_server()
            assert app2.mgr.port == port
            assert await ctx.data_service_request_bidirectional(app2.uuid, ECHO, b"b") == b"b"
            # Raft traffic reconnects too.
            assert await app1.mgr.append_entries(gid, [b"set k v"]) == [b"OK"]


class _FlakyServe(GrpcTransport):
    """A GrpcTransport whose next serve() fails to bind."""

    fail_next = False

    async def serve(self, handler: StepHandler, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OSError(98, "Address already in use")
        await super().serve(handler, task_status=task_status)


async def test_restart_server_failure_is_reported_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = InMemoryApplication(str(uuid.uuid4()))
    transport = _FlakyServe(server_uuid=app.server_uuid, host="127.0.0.1",
                            lookup_peer=app.lookup_peer)
    config = ManagerConfig(server_uuid=app.server_uuid)
    async with Manager(config, app, transport=transport) as mgr:
        gid = str(uuid.uuid4())
        assert mgr.bind_data_service_request(ECHO, gid, _echo)
        port = mgr.port
        transport.fail_next = True
        with caplog.at_level(logging.ERROR):
            assert not await mgr.restart_server()
        assert "cannot serve" in caplog.text
        assert await mgr.restart_server()
        assert mgr.port == port
        assert mgr.data_service.bindings == [(ECHO, gid)]


async def test_payload_size_limits() -> None:
    gid = str(uuid.uuid4())
    limit = 1 << 20
    with trio.fail_after(30):
        async with _open(2, max_message_size=limit) as cluster:
            app1, app2 = cluster.nodes

            async def grow(data: bytes) -> bytes:
                return data * 2

            app2.mgr.bind_data_service_request(ECHO, gid, _echo)
            app2.mgr.bind_data_service_request("grow", gid, grow)
            await _group(cluster, gid, app1, app2)
            ctx = app1.mgr.group(gid)
            near = b"x" * (limit - 1024)
            assert await ctx.data_service_request_bidirectional(app2.uuid, ECHO, near) == near
            with pytest.raises(BadRequest, match="larger than the maximum"):
                await ctx.data_service_request_bidirectional(app2.uuid, ECHO, b"x" * limit)
            with pytest.raises(BadRequest):  # the response is too large (RESOURCE_EXHAUSTED)
                await ctx.data_service_request_bidirectional(app2.uuid, "grow", near)
            # The channel survived all of it.
            assert await ctx.data_service_request_bidirectional(app2.uuid, ECHO, b"y") == b"y"


async def test_handler_errors_and_deadline() -> None:
    gid = str(uuid.uuid4())
    cancelled = trio.Event()

    async def not_found(data: bytes) -> bytes:
        raise ServerNotFound("no such blob")

    async def bad(data: bytes) -> bytes:
        raise BadRequest("bad key")

    async def broken(data: bytes) -> bytes:
        raise ValueError("boom")

    async def wrong_type(data: bytes) -> bytes:
        return "text"  # type: ignore[return-value]

    async def slow(data: bytes) -> bytes:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    with trio.fail_after(30):
        async with _open(2, data_request_timeout=0.5) as cluster:
            app1, app2 = cluster.nodes
            for name, fn in [("not_found", not_found), ("bad", bad), ("broken", broken),
                             ("wrong_type", wrong_type), ("slow", slow), (ECHO, _echo)]:
                assert app2.mgr.bind_data_service_request(name, gid, fn)
            await _group(cluster, gid, app1, app2)
            ctx = app1.mgr.group(gid)
            with pytest.raises(ServerNotFound, match="no such blob"):
                await ctx.data_service_request_bidirectional(app2.uuid, "not_found", b"")
            with pytest.raises(BadRequest, match="bad key"):
                await ctx.data_service_request_bidirectional(app2.uuid, "bad", b"")
            with pytest.raises(Failed, match="boom"):
                await ctx.data_service_request_unidirectional(app2.uuid, "broken", b"")
            with pytest.raises(Failed, match="not bytes"):
                await ctx.data_service_request_bidirectional(app2.uuid, "wrong_type", b"")
            start = trio.current_time()
            with pytest.raises(RaftTimeout):
                await ctx.data_service_request_bidirectional(app2.uuid, "slow", b"")
            assert trio.current_time() - start < 2
            with trio.fail_after(2):
                await cancelled.wait()  # the peer's handler was cancelled too
            # Blobs are concatenated, as nuraft_mesg's io_blob lists.
            assert await ctx.data_service_request_bidirectional(
                app2.uuid, ECHO, [b"ab", b"", b"cd"]) == b"abcd"


async def test_destinations() -> None:
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with _open(3) as cluster:
            app1, app2, app3 = cluster.nodes
            for n in cluster.nodes:
                n.mgr.bind_data_service_request(ECHO, gid, _echo)
            await _group(cluster, gid, app1, app2)
            await app1.mgr.add_member(gid, app3.uuid, learner=True)
            ctx = app1.mgr.group(gid)
            for dest in (app1.uuid, to_server_id(app1.uuid)):  # never to self
                with pytest.raises(ServerNotFound):
                    await ctx.data_service_request_bidirectional(dest, ECHO, b"")
            bad: list[Any] = ["not-a-uuid", True, ANY, 1.5]
            for wrong in bad:
                with pytest.raises(BadRequest):
                    await ctx.data_service_request_bidirectional(wrong, ECHO, b"")
            # A learner is a member: reachable by uuid and by server id.
            assert await ctx.data_service_request_bidirectional(
                to_server_id(app3.uuid), ECHO, b"l") == b"l"
            assert await ctx.data_service_request_bidirectional(
                app3.uuid.upper(), ECHO, b"u") == b"u"
            # A follower reaches the leader and its fellow follower.
            f = app2.mgr.group(gid)
            assert await f.data_service_request_bidirectional(LEADER, ECHO, b"L") == b"L"
            assert await f.data_service_request_bidirectional(app3.uuid, ECHO, b"3") == b"3"


async def test_send_failures_are_logged_throttled(caplog: pytest.LogCaptureFixture) -> None:
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with _open(2) as cluster:
            app1, app2 = cluster.nodes
            await _group(cluster, gid, app1, app2)
            ctx = app1.mgr.group(gid)
            with caplog.at_level(logging.DEBUG, logger="nuraft_mesg.data_service"):
                for _ in range(5):
                    with pytest.raises(BadRequest):
                        await ctx.data_service_request_bidirectional(app2.uuid, "nope", b"")
            lines = [r for r in caplog.records if r.name.startswith("nuraft_mesg.data_service")]
            assert [r.levelno for r in lines] == [logging.WARNING] * 3  # failures 1, 2, 4
            assert "failure 4 in this 60s window" in lines[-1].getMessage()


async def test_log_throttle_window(autojump_clock: trio.abc.Clock) -> None:
    throttle = _LogThrottle(window=60)
    key = ("peer", int(ResultCode.TIMEOUT))
    assert [throttle.hit(key) for _ in range(9)] == [1, 2, 0, 4, 0, 0, 0, 8, 0]
    assert throttle.hit(("other", 1)) == 1
    await trio.sleep(61)
    assert throttle.hit(key) == 1


class _RaftOnly(Transport):
    async def serve(self, handler: StepHandler, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(0)

    async def call(self, peer: str, request: GroupEnvelope, *,
                   timeout: float) -> GroupEnvelope:  # noqa: ASYNC109
        raise TransportError(Status.UNAVAILABLE, "no network")


async def test_transport_default_data_call_is_unimplemented() -> None:
    with pytest.raises(TransportError) as info:
        await _RaftOnly().data_call("p", DataRequest(str(uuid.uuid4()), "n", b""), timeout=1)
    assert info.value.status == Status.UNIMPLEMENTED
    assert info.value.code == ResultCode.BAD_REQUEST
