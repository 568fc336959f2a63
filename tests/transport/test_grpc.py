"""GrpcTransport against real purerpc on loopback: routing, error mapping, channel cache,
failures (dead, restarted, slow, silent peers) and cancellation."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import purerpc
import pytest
import trio
import trio.testing
from purerpc.grpclib.events import ResponseEnded

from nuraft_mesg.errors import ResultCode
from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.transport._proto.messaging_service_grpc import MessagingStub
from nuraft_mesg.transport._proto.messaging_service_pb2 import RaftGroupMsg
from nuraft_mesg.transport.base import Status, StepError, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope, group_msg_to_proto
from nuraft_mesg.transport.grpc import GrpcTransport, parse_address

from . import (
    LOCALHOST,
    Directory,
    FakeHandler,
    cluster,
    make_reply,
    make_request,
    new_uuid,
    start_node,
)

GROUP = new_uuid()


async def call_error(
    transport: GrpcTransport, peer: str, request: GroupEnvelope, within: float = 5.0
) -> TransportError:
    """The TransportError of one call (with ``within`` as its deadline)."""
    with pytest.raises(TransportError) as info:
        await transport.call(peer, request, timeout=within)
    return info.value


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port on which nothing listens (bound, so nobody else takes it)."""
    sock = socket.socket()
    sock.bind((LOCALHOST, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# -- round trip and routing -------------------------------------------------------------------
async def test_round_trip_both_directions() -> None:
    async with cluster(2) as (directory, (a, b)):
        b.handler.step = lambda req: _const(make_reply(req, dest_addr=a.uuid))
        reply = await a.transport.call(b.uuid, make_request(GROUP, b.uuid, term=3), timeout=5)
        assert reply.group_id == GROUP
        assert reply.group_type == "" and reply.intended_addr == ""
        assert reply.dest_addr == a.uuid
        assert reply.message.type == MsgType.APPEND_ENTRIES_RESPONSE
        assert reply.message.term == 3 and reply.message.context == b"ctx"
        (seen,) = b.handler.requests
        assert seen == make_request(GROUP, b.uuid, term=3)

        back = await b.transport.call(a.uuid, make_request(GROUP, a.uuid), timeout=5)
        assert back.message.accepted
        assert directory.lookups == [b.uuid, a.uuid]


async def _const(value: GroupEnvelope) -> GroupEnvelope:
    return value


async def test_intended_addr_defaults_to_peer() -> None:
    async with cluster(2) as (_, (a, b)):
        request = make_request(GROUP, "")
        await a.transport.call(b.uuid, request, timeout=5)
        assert b.handler.requests[0].intended_addr == b.uuid


async def test_one_channel_per_peer_shared_by_groups_and_concurrent_calls() -> None:
    async with cluster(2) as (directory, (a, b)):
        replies: list[GroupEnvelope] = []

        async def one(i: int) -> None:
            group = GROUP if i % 2 else new_uuid()
            replies.append(await a.transport.call(b.uuid, make_request(group, b.uuid), timeout=5))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
        assert len(replies) == 200
        assert directory.lookups == [b.uuid]  # resolved once: one channel


async def test_large_message_round_trip() -> None:
    async with cluster(2) as (_, (a, b)):
        big = bytes(range(256)) * 8192  # 2 MiB: several HTTP/2 frames and window updates
        await a.transport.call(b.uuid, make_request(GROUP, b.uuid, payload=big), timeout=10)
        assert b.handler.requests[0].message.entries[0].buffer == big


async def test_message_too_large_is_refused_locally() -> None:
    async with cluster(2, max_message_size=64 * 1024) as (directory, (a, b)):
        big = b"x" * (65 * 1024)
        err = await call_error(a.transport, b.uuid, make_request(GROUP, b.uuid, payload=big))
        assert err.status == Status.RESOURCE_EXHAUSTED
        assert directory.lookups == []  # nothing was sent
        assert b.handler.requests == []


async def test_unencodable_request_is_invalid_argument() -> None:
    async with cluster(2) as (_, (a, b)):
        msg = Message(MsgType.APPEND_ENTRIES_REQUEST, 1 << 63, 1, 2)
        err = await call_error(a.transport, b.uuid, GroupEnvelope(GROUP, "", b.uuid, msg))
        assert err.status == Status.INVALID_ARGUMENT
        response = Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2)
        err = await call_error(a.transport, b.uuid, GroupEnvelope(GROUP, "", b.uuid, response))
        assert err.status == Status.INVALID_ARGUMENT


# -- server-side validation and error mapping ---------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (Status.NOT_FOUND, ResultCode.SERVER_NOT_FOUND),
        (Status.CANCELLED, ResultCode.CANCELLED),
        (Status.FAILED_PRECONDITION, ResultCode.TERM_MISMATCH),
        (Status.DATA_LOSS, ResultCode.FAILED),
    ],
)
async def test_step_error_status_reaches_caller(status: Status, code: ResultCode) -> None:
    async def refuse(request: GroupEnvelope) -> GroupEnvelope:
        raise StepError(status, f"Missing RAFT group {request.group_id} (ünïcode, 100%)")

    async with cluster(2) as (directory, (a, b)):
        b.handler.step = refuse
        err = await call_error(a.transport, b.uuid, make_request(GROUP, b.uuid))
        assert err.status == status and err.code == code
        assert err.message == f"Missing RAFT group {GROUP} (ünïcode, 100%)"
        # Not a bad_service status: the channel is kept.
        b.handler.step = lambda req: _const(make_reply(req))
        await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
        assert directory.lookups == [b.uuid]


async def test_intended_addr_mismatch_marks_channel_bad_and_re_resolves() -> None:
    async with cluster(3) as (directory, (a, b, c)):
        right = directory.addresses[b.uuid]
        directory.addresses[b.uuid] = c.address  # stale mapping: b's uuid -> c's address
        err = await call_error(a.transport, b.uuid, make_request(GROUP, b.uuid))
        assert err.status == Status.INVALID_ARGUMENT
        assert err.message == f"intended addr: [{b.uuid}], our addr: [{c.uuid}]"
        assert c.handler.requests == []

        directory.addresses[b.uuid] = right
        reply = await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
        assert reply.message.accepted
        assert directory.lookups == [b.uuid, b.uuid]  # the channel was rebuilt


@pytest.mark.parametrize(
    ("group_id", "intended", "expected"),
    [
        ("not-a-uuid", None, "Bad GroupID 'not-a-uuid'"),
        ("", None, "Bad GroupID ''"),
        (GROUP, "nobody", "Bad intended addr 'nobody'"),
    ],
)
async def test_non_uuid_routing_fields_are_invalid_argument(
    group_id: str, intended: str | None, expected: str
) -> None:
    async with cluster(2) as (_, (a, b)):
        request = make_request(group_id, b.uuid if intended is None else intended)
        err = await call_error(a.transport, b.uuid, request)
        assert err.status == Status.INVALID_ARGUMENT
        assert err.message == expected
        assert b.handler.requests == []
        await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)


class RawBytes:
    """A request "message" that puts arbitrary bytes on the wire (for the stock client)."""

    class DESCRIPTOR:  # mimics protobuf's class attribute
        full_name = "nuraft_mesg.RaftGroupMsg"

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


async def stock_call(
    address: str, payload: Any, *, method: str = "RaftStep", request_type: Any = RawBytes
) -> RaftGroupMsg:
    """One unary call with purerpc's own client (not our transport)."""
    host, port = parse_address(address)
    signature = purerpc.RPCSignature(purerpc.Cardinality.UNARY_UNARY, request_type, RaftGroupMsg)
    with trio.fail_after(5):
        async with purerpc.insecure_channel(host, port) as channel:
            stub = purerpc.Client("nuraft_mesg.Messaging", channel).get_method_stub(
                method, signature
            )
            # Catch here: anything leaving the channel's block comes out wrapped in (nested)
            # ExceptionGroups, as purerpc's channel holds an anyio task group.
            try:
                reply: RaftGroupMsg = await stub(payload)
            except purerpc.RpcFailedError as exc:
                failure = exc
            else:
                return reply
    raise failure


async def test_malformed_bytes_are_invalid_argument_and_server_keeps_serving() -> None:
    async with cluster(2) as (_, (a, b)):
        for garbage in (b"\xff\xff\xff", b"\x0a\x05abc", b""):
            with pytest.raises(purerpc.RpcFailedError) as info:
                await stock_call(b.address, RawBytes(garbage))
            assert info.value.status.status_code == purerpc.StatusCode.INVALID_ARGUMENT
            assert info.value.status.status_message.startswith("Bad request:")
        assert b.handler.requests == []
        await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)


async def test_stock_purerpc_stub_interoperates() -> None:
    async with cluster(1) as (_, (b,)):
        msg = make_request(GROUP, b.uuid)
        pb = group_msg_to_proto(msg.group_id, msg.group_type, b.uuid, msg.message)
        host, port = parse_address(b.address)
        with trio.fail_after(5):
            async with purerpc.insecure_channel(host, port) as channel:
                stub = MessagingStub(channel)  # type: ignore[no-untyped-call]
                reply = await stub.RaftStep(pb)
        assert reply.group_id == GROUP
        assert reply.msg.rc_response.accepted


async def test_unknown_method_is_unimplemented() -> None:
    async with cluster(1) as (_, (b,)):
        with pytest.raises(purerpc.RpcFailedError) as info:
            await stock_call(b.address, RawBytes(b""), method="Nope")
        assert info.value.status.status_code == purerpc.StatusCode.UNIMPLEMENTED


async def test_handler_exception_is_internal_and_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def crash(request: GroupEnvelope) -> GroupEnvelope:
        raise RuntimeError("boom")

    async def nonsense(request: GroupEnvelope) -> GroupEnvelope:
        return "not an envelope"  # type: ignore[return-value]

    async def answers_with_a_request(request: GroupEnvelope) -> GroupEnvelope:
        return request

    async with cluster(2) as (directory, (a, b)):
        for step in (crash, nonsense, answers_with_a_request):
            b.handler.step = step
            err = await call_error(a.transport, b.uuid, make_request(GROUP, b.uuid))
            assert err.status == Status.INTERNAL
        assert "RuntimeError: boom" in caplog.text
        b.handler.step = lambda req: _const(make_reply(req))
        await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
        assert directory.lookups == [b.uuid]


# -- peers that cannot be reached --------------------------------------------------------------
async def test_unknown_peer_is_unavailable_at_once() -> None:
    def broken(peer: str) -> str:
        raise KeyError(peer)

    async with cluster(1) as (directory, (a,)):
        directory.addresses["bad-address"] = "no port here"
        with trio.fail_after(1):
            for peer in ("nobody", "bad-address"):
                err = await call_error(a.transport, peer, make_request(GROUP, peer))
                assert err.status == Status.UNAVAILABLE and err.code == ResultCode.SERVER_NOT_FOUND
            a.transport.client._lookup_peer = broken
            err = await call_error(a.transport, "x", make_request(GROUP, "x"))
            assert err.status == Status.UNAVAILABLE


async def test_peer_down_is_unavailable_quickly_with_reconnect_backoff(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.rate = 1  # real time, but the backoff can be skipped with jump()
    async with cluster(1) as (directory, (a,)):
        peer = new_uuid()
        with closed_port() as port:
            directory.addresses[peer] = f"{LOCALHOST}:{port}"
            with trio.fail_after(1):
                err = await call_error(a.transport, peer, make_request(GROUP, peer))
                assert err.status == Status.UNAVAILABLE
                assert directory.lookups == [peer]
                # Within the backoff: refused without resolving or connecting again.
                err = await call_error(a.transport, peer, make_request(GROUP, peer))
                assert err.status == Status.UNAVAILABLE and "next connection attempt" in err.message
                assert directory.lookups == [peer]
                mock_clock.jump(0.05)
                err = await call_error(a.transport, peer, make_request(GROUP, peer))
                assert "next connection attempt" not in err.message
                assert directory.lookups == [peer, peer]
                # The backoff doubled: 0.05 s is no longer enough.
                mock_clock.jump(0.05)
                err = await call_error(a.transport, peer, make_request(GROUP, peer))
                assert "next connection attempt" in err.message

        # The peer comes up on that port: once the backoff is over, calls go through.
        async with trio.open_nursery() as nursery:
            await start_node(nursery, directory, node_uuid=peer, port=port)
            mock_clock.jump(0.5)
            await a.transport.call(peer, make_request(GROUP, peer), timeout=5)
            nursery.cancel_scope.cancel()


async def test_restarted_peer_is_reached_through_a_rebuilt_channel() -> None:
    directory = Directory()
    async with trio.open_nursery() as nursery, cluster(1, directory) as (_, (a,)):
        b = await start_node(nursery, directory)
        await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
        port = b.transport.port
        await b.stop()
        b2 = await start_node(nursery, directory, node_uuid=b.uuid, port=port)
        assert b2.address == b.address

        failures = 0
        for _ in range(3):
            try:
                await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
            except TransportError as exc:
                assert exc.status == Status.UNAVAILABLE
                failures += 1
        assert failures <= 1
        assert len(b2.handler.requests) == 3 - failures
        assert directory.lookups.count(b.uuid) == 2
        nursery.cancel_scope.cancel()


async def test_peer_stopping_mid_call_fails_the_call_promptly() -> None:
    directory = Directory()
    entered = trio.Event()

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError

    async with trio.open_nursery() as nursery, cluster(1, directory) as (_, (a,)):
        b = await start_node(nursery, directory, handler=FakeHandler(hang))
        result: list[TransportError] = []

        async def caller() -> None:
            result.append(await call_error(a.transport, b.uuid, make_request(GROUP, b.uuid), 30))

        with trio.fail_after(5):
            async with trio.open_nursery() as calls:
                calls.start_soon(caller)
                await entered.wait()
                await b.stop()
        assert result[0].status == Status.UNAVAILABLE
        nursery.cancel_scope.cancel()


# -- slow and silent peers ---------------------------------------------------------------------
async def test_slow_peer_times_out_while_other_peers_are_served() -> None:
    entered = trio.Event()

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError

    async with cluster(3) as (_, (a, slow, fast)):
        slow.handler.step = hang
        outcome: list[TransportError] = []
        served_meanwhile = 0

        async def slow_call() -> None:
            outcome.append(
                await call_error(a.transport, slow.uuid, make_request(GROUP, slow.uuid), within=1.0)
            )

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_call)
                await entered.wait()
                for _ in range(20):
                    await a.transport.call(fast.uuid, make_request(GROUP, fast.uuid), timeout=5)
                    served_meanwhile += not outcome
        assert served_meanwhile == 20  # all answered while the slow call was pending
        assert outcome[0].status == Status.DEADLINE_EXCEEDED
        assert outcome[0].code == ResultCode.TIMEOUT


async def test_deadline_cancels_the_servers_handler() -> None:
    entered, cancelled = trio.Event(), trio.Event()

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError

    async with cluster(2) as (directory, (a, b)):
        b.handler.step = hang
        err = await call_error(a.transport, b.uuid, make_request(GROUP, b.uuid), within=0.3)
        assert err.status == Status.DEADLINE_EXCEEDED
        with trio.fail_after(5):
            await cancelled.wait()  # the client's RST_STREAM reached the server
        slot = a.transport.client._peers[b.uuid]
        assert slot.channel is not None and slot.channel.socket is not None
        assert slot.channel.socket._streams == {}  # the abandoned stream was not leaked
        b.handler.step = lambda req: _const(make_reply(req))
        await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
        assert directory.lookups == [b.uuid]  # a live channel is kept after a timeout


async def test_slow_but_live_peer_keeps_its_channel() -> None:
    """Timed-out calls send PINGs; a live peer answers them, so nothing is rebuilt."""

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        await trio.sleep_forever()
        raise AssertionError

    async with cluster(2) as (directory, (a, b)):
        b.handler.step = hang
        for _ in range(4):
            err = await call_error(a.transport, b.uuid, make_request(GROUP, b.uuid), within=0.2)
            assert err.status == Status.DEADLINE_EXCEEDED
        assert directory.lookups == [b.uuid]


async def test_grpc_timeout_header_bounds_the_handler() -> None:
    """A C++ nuraft_mesg client sends grpc-timeout; the server answers DEADLINE_EXCEEDED."""
    cancelled = trio.Event()

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError

    async with cluster(1) as (_, (b,)):
        b.handler.step = hang
        msg = make_request(GROUP, b.uuid)
        pb = group_msg_to_proto(msg.group_id, msg.group_type, b.uuid, msg.message)
        host, port = parse_address(b.address)
        with trio.fail_after(5):
            async with purerpc.insecure_channel(host, port) as channel:
                # purerpc's stubs cannot send a timeout: start the request one level down.
                stream = await channel._grpc_socket.start_request(
                    "http",
                    "nuraft_mesg.Messaging",
                    "RaftStep",
                    "nuraft_mesg.RaftGroupMsg",
                    b.address,
                    timeout=datetime.timedelta(milliseconds=200),
                )
                stream.expect_message_type(RaftGroupMsg)
                await stream.send_message(pb)
                await stream.close()
                event = await stream.receive_event()
                while not isinstance(event, ResponseEnded):
                    event = await stream.receive_event()
            await cancelled.wait()
        assert event.status.status_code == purerpc.StatusCode.DEADLINE_EXCEEDED


async def test_slow_connect_does_not_block_other_peers() -> None:
    async with cluster(2) as (directory, (a, b)):
        # A listener whose accept queue is full: SYNs are dropped, so connect() hangs.
        backlog = socket.socket()
        backlog.bind((LOCALHOST, 0))
        backlog.listen(0)
        port = backlog.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                with trio.move_on_after(0.3):
                    fillers.append(await anyio.connect_tcp(LOCALHOST, port))
            stuck = new_uuid()
            directory.addresses[stuck] = f"{LOCALHOST}:{port}"
            errors: list[TransportError] = []
            done_fast = 0

            async def stuck_call() -> None:
                errors.append(
                    await call_error(a.transport, stuck, make_request(GROUP, stuck), within=1.0)
                )

            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stuck_call)
                    nursery.start_soon(stuck_call)
                    await trio.testing.wait_all_tasks_blocked()
                    for _ in range(10):
                        await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
                        done_fast += not errors
            assert done_fast == 10
            assert [e.status for e in errors] == [Status.DEADLINE_EXCEEDED] * 2
        finally:
            for filler in fillers:
                await filler.aclose()
            backlog.close()


async def test_silent_peer_channel_is_retired_after_a_quiet_timeout() -> None:
    """A peer that accepts TCP but never answers at all (host gone, no FIN)."""
    async with cluster(1) as (directory, (a,)):
        listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
        port = listeners[0].socket.getsockname()[1]
        peer = new_uuid()
        directory.addresses[peer] = f"{LOCALHOST}:{port}"
        held: list[trio.SocketStream] = []

        async def black_hole(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            while True:
                held.append(await listeners[0].accept())

        async with trio.open_nursery() as nursery:
            await nursery.start(black_hole)
            for expected_lookups in (1, 1, 2):
                err = await call_error(a.transport, peer, make_request(GROUP, peer), 0.2)
                assert err.status == Status.DEADLINE_EXCEEDED
                assert len(directory.lookups) == expected_lookups
            nursery.cancel_scope.cancel()
        for stream in held:
            await stream.aclose()
        await listeners[0].aclose()


# -- lifecycle and cancellation ----------------------------------------------------------------
async def test_serve_reports_the_bound_port() -> None:
    async with cluster(1) as (directory, (a,)):
        assert a.transport.port != 0
        assert directory.addresses[a.uuid] == f"{LOCALHOST}:{a.transport.port}"


async def test_cancelling_serve_with_a_request_in_flight() -> None:
    entered, handler_cancelled = trio.Event(), trio.Event()

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            handler_cancelled.set()
            raise
        raise AssertionError

    directory = Directory()
    async with cluster(1, directory) as (_, (a,)):
        b_uuid = new_uuid()
        b = GrpcTransport(server_uuid=b_uuid, host=LOCALHOST, lookup_peer=directory)
        serve_outcome: list[str] = []
        call_result: list[TransportError] = []

        async def run_serve(task_status: trio.TaskStatus[int]) -> None:
            try:
                await b.serve(FakeHandler(hang), task_status=task_status)
            except trio.Cancelled:
                serve_outcome.append("cancelled")
                raise
            serve_outcome.append("returned")  # pragma: no cover - the failure we test for

        async def caller() -> None:
            call_result.append(
                await call_error(a.transport, b_uuid, make_request(GROUP, b_uuid), within=30)
            )

        with trio.fail_after(5):
            async with trio.open_nursery() as outer:
                async with trio.open_nursery() as serving:
                    port = await serving.start(run_serve)
                    directory.addresses[b_uuid] = f"{LOCALHOST}:{port}"
                    outer.start_soon(caller)
                    await entered.wait()
                    serving.cancel_scope.cancel()
                assert serving.cancel_scope.cancelled_caught
        assert serve_outcome == ["cancelled"]
        assert handler_cancelled.is_set()
        assert call_result[0].status == Status.UNAVAILABLE


async def test_serve_cancellation_propagates_through_an_enclosing_scope() -> None:
    """serve() must raise Cancelled, not return: code after it in the same scope never runs."""
    transport = GrpcTransport(server_uuid=new_uuid(), host=LOCALHOST, lookup_peer=Directory())
    reached_after_serve = False

    async def run(task_status: trio.TaskStatus[int]) -> None:
        nonlocal reached_after_serve
        await transport.serve(FakeHandler(), task_status=task_status)
        reached_after_serve = True  # pragma: no cover

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            nursery.cancel_scope.cancel()
    assert not reached_after_serve


async def test_client_only_transport_with_async_with() -> None:
    async with cluster(1) as (directory, (b,)):
        client = GrpcTransport(server_uuid=new_uuid(), lookup_peer=directory)
        err = await call_error(client, b.uuid, make_request(GROUP, b.uuid))
        assert err.status == Status.UNAVAILABLE and "not running" in err.message
        async with client:
            await client.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
        err = await call_error(client, b.uuid, make_request(GROUP, b.uuid))
        assert err.status == Status.UNAVAILABLE


async def test_an_error_in_the_async_with_block_comes_out_unwrapped() -> None:
    async with cluster(1) as (directory, (b,)):
        client = GrpcTransport(server_uuid=new_uuid(), lookup_peer=directory)
        with pytest.raises(ZeroDivisionError):
            async with client:
                await client.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
                raise ZeroDivisionError


async def test_aclose_closes_channels_and_refuses_calls() -> None:
    async with cluster(2) as (_, (a, b)):
        await a.transport.call(b.uuid, make_request(GROUP, b.uuid), timeout=5)
        with trio.fail_after(2):
            await a.transport.aclose()
            await a.transport.aclose()  # idempotent
        err = await call_error(a.transport, b.uuid, make_request(GROUP, b.uuid))
        assert err.status == Status.UNAVAILABLE and "closed" in err.message


async def test_serve_on_a_busy_port_fails_before_starting() -> None:
    async with cluster(1) as (directory, (a,)), trio.open_nursery() as nursery:
        with pytest.raises(OSError):
            await start_node(nursery, directory, port=a.transport.port)


async def test_serve_twice_is_refused() -> None:
    async with cluster(1) as (_, (a,)):
        with pytest.raises(RuntimeError):
            await a.transport.serve(FakeHandler())


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:5000", ("::1", 5000)), ("h:1", ("h", 1))],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "host", ":80", "host:", "host:x", "host:0", "h:70000"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        GrpcTransport(server_uuid="not-a-uuid", lookup_peer=Directory())
    with pytest.raises(ValueError):
        GrpcTransport(server_uuid=new_uuid(), lookup_peer=Directory(), max_message_size=1 << 31)
