"""Message size limits: ``max_send_message_size`` and ``max_receive_message_size`` on both
ends.  An oversize message gets RESOURCE_EXHAUSTED and nothing else suffers: the other calls on
the same connection (other groups), the connection itself and other peers go on."""

from __future__ import annotations

import dataclasses
import gzip
import uuid
import zlib

import pytest
import trio

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.manager import ManagerConfig
from nuraft_mesg.transport.base import DataRequest, Status, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope, encode_group_msg
from nuraft_mesg.transport.grpc import GrpcTransport
from tests.transport import Directory, FakeHandler, make_reply, make_request, start_node

from . import LiveCluster, count_input
from .h2raw import H2Client, grpc_frame, request_headers

KIB = 1024


async def test_oversize_request_is_refused_per_stream() -> None:
    """The server accepts 64 KiB; the client may send 1 MiB.  A 200 KiB request for one group
    is refused while calls for another group share the connection, which survives."""
    directory = Directory()
    async with trio.open_nursery() as nursery:
        server = await start_node(nursery, directory)
        server.transport.max_receive_message_size = 64 * KIB  # read at each new connection
        big_group, small_group = str(uuid.uuid4()), str(uuid.uuid4())

        async def slow_echo(request: GroupEnvelope) -> GroupEnvelope:
            await trio.sleep(0.01)
            return make_reply(request)

        server.handler.step = slow_echo
        client = GrpcTransport(server_uuid=str(uuid.uuid4()), lookup_peer=directory,
                               max_send_message_size=1 << 20)
        async with client:
            # warm up the channel, remember its connection
            await client.call(server.uuid, make_request(small_group, server.uuid), timeout=5)
            socket = client.client._peers[server.uuid].channel.socket  # type: ignore[union-attr]
            results: list[str] = []

            async def small(k: int) -> None:
                for _ in range(20):
                    reply = await client.call(
                        server.uuid, make_request(small_group, server.uuid, payload=b"x" * k),
                        timeout=5)
                    assert reply.message.accepted
                results.append("ok")

            async def big() -> None:
                for _ in range(5):
                    with pytest.raises(TransportError) as info:
                        await client.call(
                            server.uuid,
                            make_request(big_group, server.uuid, payload=b"B" * (200 * KIB)),
                            timeout=5)
                    assert info.value.status == Status.RESOURCE_EXHAUSTED
                    assert "maximum receive size" in info.value.message
                    count_input("oversize")
                results.append("refused")

            async with trio.open_nursery() as calls:
                for k in (10, 1000, 30 * KIB):
                    calls.start_soon(small, k)
                calls.start_soon(big)
            assert sorted(results) == ["ok", "ok", "ok", "refused"]
            # the same connection carried everything and is still in use
            channel = client.client._peers[server.uuid].channel
            assert channel.socket is socket  # type: ignore[union-attr]
            assert socket is not None and socket.alive
        assert all(r.group_id == small_group for r in server.handler.requests)
        nursery.cancel_scope.cancel()


async def test_send_limit_is_checked_before_sending() -> None:
    directory = Directory()
    async with trio.open_nursery() as nursery:
        server = await start_node(nursery, directory)
        async with GrpcTransport(server_uuid=str(uuid.uuid4()), lookup_peer=directory,
                                 max_send_message_size=8 * KIB) as client:
            with pytest.raises(TransportError) as info:
                await client.call(server.uuid, make_request(str(uuid.uuid4()), server.uuid,
                                                            payload=b"x" * (9 * KIB)), timeout=5)
            assert info.value.status == Status.RESOURCE_EXHAUSTED
            assert "maximum send size" in info.value.message
            with pytest.raises(TransportError) as info:
                await client.data_call(server.uuid, DataRequest(str(uuid.uuid4()), "n",
                                                                b"x" * (9 * KIB)), timeout=5)
            assert info.value.status == Status.RESOURCE_EXHAUSTED
        assert server.handler.requests == []  # nothing was sent
        nursery.cancel_scope.cancel()


async def test_reply_limits_on_both_ends() -> None:
    """A reply larger than the server's send limit is refused there; one larger than the
    client's receive limit is refused by the client - and the channel stays usable."""
    directory = Directory()
    async with trio.open_nursery() as nursery:
        server = await start_node(nursery, directory)
        size = {"n": 0}

        async def fat(request: GroupEnvelope) -> GroupEnvelope:
            reply = make_reply(request)
            msg = dataclasses.replace(reply.message, context=b"c" * size["n"])
            return dataclasses.replace(reply, message=msg)

        server.handler.step = fat
        gid = str(uuid.uuid4())
        async with GrpcTransport(server_uuid=str(uuid.uuid4()), lookup_peer=directory,
                                 max_receive_message_size=16 * KIB) as client:
            size["n"] = 32 * KIB  # over the client's receive limit
            with pytest.raises(TransportError) as info:
                await client.call(server.uuid, make_request(gid, server.uuid), timeout=5)
            assert info.value.status == Status.RESOURCE_EXHAUSTED
            socket = client.client._peers[server.uuid].channel.socket  # type: ignore[union-attr]
            size["n"] = 1 * KIB
            assert (await client.call(server.uuid, make_request(gid, server.uuid),
                                      timeout=5)).message.context == b"c" * KIB
            channel = client.client._peers[server.uuid].channel
            assert channel.socket is socket  # type: ignore[union-attr]
            server.transport.max_send_message_size = 8 * KIB
            size["n"] = 10 * KIB  # over the server's send limit
            with pytest.raises(TransportError) as info:
                await client.call(server.uuid, make_request(gid, server.uuid), timeout=5)
            assert info.value.status == Status.RESOURCE_EXHAUSTED
            assert "maximum send size" in info.value.message
        nursery.cancel_scope.cancel()


async def test_manager_limits_apply_to_data_service_and_raft() -> None:
    """Node n1 accepts at most 64 KiB; n2 may send 1 MiB.  An oversize data-service request
    from n2 is refused (BadRequest, nuraft_mesg's mapping of RESOURCE_EXHAUSTED) while the
    group's Raft traffic on the same connection goes on and the group commits."""
    def configure(i: int, config: ManagerConfig) -> ManagerConfig:
        if i == 0:
            return dataclasses.replace(config, max_receive_message_size=64 * KIB)
        return dataclasses.replace(config, max_send_message_size=1 << 20)

    async def echo(request: bytes) -> bytes:
        return request

    async with LiveCluster.open(3, configure) as cluster:
        n1, n2, _ = cluster.nodes
        gid = await cluster.create_group()
        assert n1.mgr.bind_data_service_request("echo", gid, echo)
        ctx = n2.mgr.group(gid)
        assert await ctx.data_service_request_bidirectional(n1.uuid, "echo", b"a" * KIB) == (
            b"a" * KIB)
        for _ in range(3):
            with pytest.raises(BadRequest):
                await ctx.data_service_request_bidirectional(n1.uuid, "echo", b"a" * (100 * KIB))
            count_input("oversize")
            await cluster.commit(gid, b"set k v")
        assert await ctx.data_service_request_bidirectional(n1.uuid, "echo", b"b") == b"b"
        cluster.check()


def test_limits_are_validated() -> None:
    for bad in ({"max_send_message_size": 1 << 31}, {"max_receive_message_size": -1},
                {"max_message_size": 1 << 30}):
        with pytest.raises(ValueError):
            GrpcTransport(server_uuid=str(uuid.uuid4()), lookup_peer=lambda p: "",
                          **bad)  # type: ignore[arg-type]
    t = GrpcTransport(server_uuid=str(uuid.uuid4()), lookup_peer=lambda p: "",
                      max_message_size=1000, max_receive_message_size=500)
    assert (t.max_send_message_size, t.max_receive_message_size) == (1000, 500)


# -- compressed messages (the gRPC length prefix's flag and grpc-encoding) -------------------
@pytest.fixture
async def echo_server(nursery: trio.Nursery) -> tuple[str, int, FakeHandler]:
    directory = Directory()
    node = await start_node(nursery, directory)
    node.transport.max_receive_message_size = 64 * KIB  # read at each new connection
    return node.uuid, node.transport.port, node.handler


def _request(server_uuid: str) -> bytes:
    env = make_request(str(uuid.uuid4()), server_uuid, payload=b"p" * 100)
    return encode_group_msg(env.group_id, env.group_type, env.intended_addr, env.message)


@pytest.mark.parametrize("case", [
    "gzip", "deflate", "gzip-bomb", "unknown-encoding", "flag-without-encoding", "bad-flag",
    "corrupt-gzip", "length-lies-short",
])
async def test_compressed_and_malformed_frames(
    echo_server: tuple[str, int, FakeHandler], case: str
) -> None:
    server_uuid, port, _handler = echo_server
    body = _request(server_uuid)
    extra: list[tuple[str, str]] = []
    expect = Status.OK
    if case == "gzip":
        frame, extra = grpc_frame(gzip.compress(body), compressed=True), [("grpc-encoding",
                                                                             "gzip")]
    elif case == "deflate":
        frame, extra = grpc_frame(zlib.compress(body), compressed=True), [("grpc-encoding",
                                                                             "deflate")]
    elif case == "gzip-bomb":  # 2 KiB on the wire, 10 MiB inflated
        frame = grpc_frame(gzip.compress(b"\0" * (10 << 20)), compressed=True)
        extra, expect = [("grpc-encoding", "gzip")], Status.RESOURCE_EXHAUSTED
    elif case == "unknown-encoding":
        frame = grpc_frame(body, compressed=True)
        extra, expect = [("grpc-encoding", "snappy")], Status.UNIMPLEMENTED
    elif case == "flag-without-encoding":
        frame, expect = grpc_frame(body, compressed=True), Status.INTERNAL
    elif case == "bad-flag":
        frame, expect = grpc_frame(body, compressed=7), Status.INTERNAL
    elif case == "corrupt-gzip":
        frame = grpc_frame(gzip.compress(body)[:-9] + b"garbage!!", compressed=True)
        extra, expect = [("grpc-encoding", "gzip")], Status.INTERNAL
    else:  # the prefix promises 10 bytes, the stream ends after 5: no complete message
        frame, expect = grpc_frame(b"12345", length=10), Status.INVALID_ARGUMENT
    client = await H2Client.connect(port)
    try:
        sid = await client.send(request_headers(extra=extra), frame)
        reply = await client.reply(sid)
        assert reply.status == expect, reply
        # and the connection still serves a plain request
        sid = await client.send(request_headers(), grpc_frame(body))
        assert (await client.reply(sid)).status == Status.OK
    finally:
        await client.aclose()
    count_input("frames")


# -- the per-stream parser: every byte's flow-control credit comes back -----------------------
@pytest.mark.parametrize("case", ["oversize", "bomb", "bad-flag", "unknown-encoding"])
def test_rejected_messages_return_all_their_credit(case: str) -> None:
    from nuraft_mesg.transport.grpc.protocol import _ReadBuffer

    encoding = {"bomb": "gzip", "unknown-encoding": "br"}.get(case)
    buffer = _ReadBuffer(encoding, 1000)
    ok = grpc_frame(b"fine")
    bad = {
        "oversize": grpc_frame(b"x" * 1500),
        "bomb": grpc_frame(gzip.compress(b"\0" * 5000), compressed=True),
        "bad-flag": grpc_frame(b"abc", compressed=2),
        "unknown-encoding": grpc_frame(b"abc", compressed=True),
    }[case]
    stream = ok + bad + ok
    fed = 0
    rejected = None
    for k in range(0, len(stream), 7):  # DATA frames of 7 bytes, each 9 of credit (padding)
        chunk = stream[k:k + 7]
        fed += len(chunk) + 2
        rejected = buffer.feed(chunk, len(chunk) + 2)
    assert rejected is not None and rejected[0] != Status.OK
    delivered = buffer.read_all_complete_messages_flowcontrol()
    assert [m for m, _ in delivered] == [b"fine"]  # the message before the bad one
    assert sum(n for _, n in delivered) + buffer.release() == fed
    assert buffer.release() == 0
