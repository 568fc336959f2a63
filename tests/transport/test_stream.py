"""RaftStream (GrpcTransport.send_batch): batches of RaftSteps on one long-lived HTTP/2 stream
per peer.  Matching of answers, per-group order, per-item errors, hostile frames, limits,
tokens, peer loss, deadlines, the unary fallback, quiesce, ping, and task ownership."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import trio
import trio.testing

from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.transport import stream as stream_module
from nuraft_mesg.transport._proto.messaging_service_pb2 import RaftBatch, RaftBatchItem
from nuraft_mesg.transport.base import (
    FastStepHandler,
    PeerWatcher,
    Status,
    StepError,
    StepReply,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope, group_msg_to_proto
from nuraft_mesg.transport.grpc import GrpcTransport
from nuraft_mesg.transport.security import StaticTokenClient, StaticTokenVerifier
from nuraft_mesg.transport.stream import (
    answer_item,
    pack_frames,
    request_item,
    sender_header,
)
from tests.security.h2raw import H2Client, grpc_frame, request_headers

from . import (
    LOCALHOST,
    Directory,
    FakeHandler,
    echo,
    make_reply,
    make_request,
    new_uuid,
)

STREAM_PATH = "/nuraft_mesg.Messaging/RaftStream"
RAFT_STEP_PATH = "/nuraft_mesg.Messaging/RaftStep"
GROUP = new_uuid()


# -- helpers --------------------------------------------------------------------------------------
class Replies:
    """Callbacks for a batch: each records its result; duplicates are recorded too."""

    def __init__(self) -> None:
        self.results: dict[int, GroupEnvelope | TransportError] = {}
        self.duplicates: list[int] = []
        self.expected = 0
        self._done = trio.Event()
        self._changed = trio.Event()
        self.when: dict[int, float] = {}

    def callback(self, key: int) -> Callable[[GroupEnvelope | TransportError], None]:
        self.expected += 1

        def on_reply(result: GroupEnvelope | TransportError) -> None:
            if key in self.results:
                self.duplicates.append(key)
                return
            self.results[key] = result
            self.when[key] = trio.current_time()
            self._changed.set()
            if len(self.results) == self.expected:
                self._done.set()

        return on_reply

    async def wait_count(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self.results) < count:
                self._changed = trio.Event()
                await self._changed.wait()

    async def wait(self, within: float = 10.0) -> dict[int, GroupEnvelope | TransportError]:
        with trio.fail_after(within):
            await self._done.wait()
        assert not self.duplicates
        return self.results

    def reply(self, key: int) -> GroupEnvelope:
        result = self.results[key]
        assert isinstance(result, GroupEnvelope), result
        return result

    def error(self, key: int) -> TransportError:
        result = self.results[key]
        assert isinstance(result, TransportError), result
        return result


class Watcher(FakeHandler):
    """A FakeHandler that is also a PeerWatcher."""

    def __init__(self, step: Any = echo) -> None:
        super().__init__(step)
        self.lost: list[str] = []
        self.lost_event = trio.Event()

    def peer_lost(self, peer: str) -> None:
        self.lost.append(peer)
        self.lost_event.set()


class FastHandler(Watcher):
    """A FastStepHandler: answers through ``respond`` (at once unless ``hold``), and declines
    (``step_nowait`` -> False) the requests for which ``decline`` says so."""

    def __init__(self, decline: Callable[[GroupEnvelope], bool] = lambda r: False) -> None:
        super().__init__()
        self.decline = decline
        self.hold = False
        self.held: list[tuple[GroupEnvelope, StepReply]] = []
        self._held_more = trio.Event()
        self.order: list[GroupEnvelope] = []
        self.fast_count = 0

    def step_nowait(self, request: GroupEnvelope, respond: StepReply) -> bool:
        if self.decline(request):
            return False
        self.fast_count += 1
        self.order.append(request)
        if self.hold:
            self.held.append((request, respond))
            self._held_more.set()
        else:
            respond(make_reply(request))
        return True

    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        self.order.append(request)
        return await super().raft_step(request)

    async def wait_held(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self.held) < count:
                self._held_more = trio.Event()
                await self._held_more.wait()


class Node:
    def __init__(self, transport: GrpcTransport, handler: Any, scope: trio.CancelScope,
                 stopped: trio.Event) -> None:
        self.transport = transport
        self.handler = handler
        self.uuid = transport.server_uuid
        self.scope = scope
        self.stopped = stopped

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.transport.port}"

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


async def serve_node(
    nursery: trio.Nursery, directory: Directory, handler: Any = None, **options: Any
) -> Node:
    transport = GrpcTransport(server_uuid=options.pop("server_uuid", new_uuid()),
                              host=LOCALHOST, lookup_peer=directory, **options)
    handler = handler if handler is not None else Watcher()
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        try:
            with scope:
                await transport.serve(handler, task_status=task_status)
        finally:
            stopped.set()

    await nursery.start(run)
    node = Node(transport, handler, scope, stopped)
    directory.addresses[node.uuid] = node.address
    return node


@asynccontextmanager
async def pair(
    server_handler: Any = None, **server_options: Any
) -> AsyncIterator[tuple[Directory, Node, Node]]:
    """A client node ``a`` (a Watcher handler) and a server node ``b``."""
    directory = Directory()
    async with trio.open_nursery() as nursery:
        a = await serve_node(nursery, directory)
        b = await serve_node(nursery, directory, server_handler, **server_options)
        yield directory, a, b
        nursery.cancel_scope.cancel()


async def send(
    client: GrpcTransport, peer: str, requests: Sequence[GroupEnvelope], replies: Replies,
    *, timeout: float = 5.0, first_key: int = 0,  # noqa: ASYNC109 - send_batch's
) -> None:
    async with trio.open_nursery() as nursery:
        await client.send_batch(
            peer,
            [(r, replies.callback(first_key + i)) for i, r in enumerate(requests)],
            timeout=timeout,
            nursery=nursery,
        )


def link_of(client: GrpcTransport, peer: str) -> Any:
    slot = client.client._peers.get(peer)
    return None if slot is None or slot.channel is None else slot.channel.link


def request_pb(request: GroupEnvelope, intended: str | None = None) -> bytes:
    return group_msg_to_proto(
        request.group_id, request.group_type,
        request.intended_addr if intended is None else intended, request.message,
    ).SerializeToString()


def raw_frame(*items: RaftBatchItem, sender: str = "") -> bytes:
    return grpc_frame(RaftBatch(sender=sender, items=items).SerializeToString())


def answers_in(data: bytes) -> tuple[list[RaftBatchItem], int]:
    """The RaftBatchItems in a stream's received DATA (complete gRPC messages only), and
    how many bytes they took."""
    items: list[RaftBatchItem] = []
    offset = 0
    while len(data) - offset >= 5:
        flag, length = struct.unpack(">BI", data[offset:offset + 5])
        assert flag == 0
        if len(data) - offset - 5 < length:
            break
        batch = RaftBatch()
        batch.ParseFromString(data[offset + 5:offset + 5 + length])
        items.extend(batch.items)
        offset += 5 + length
    return items, offset


async def raw_answers(client: H2Client, sid: int, count: int) -> list[RaftBatchItem]:
    """Read ``count`` answers from a raw RaftStream."""
    reply = client.replies[sid]
    items: list[RaftBatchItem] = []
    with trio.fail_after(10):
        while True:
            more, used = answers_in(reply.data)
            items.extend(more)
            reply.data = reply.data[used:]
            if len(items) >= count:
                return items
            assert sid not in client.ended, reply
            await client._read_once()


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


@contextmanager
def closed_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind((LOCALHOST, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# -- frame encoding -------------------------------------------------------------------------------
def test_hand_made_frames_parse_as_raft_batches() -> None:
    msgs = [request_pb(make_request(GROUP, new_uuid(), term=t, payload=b"p" * t))
            for t in (1, 200, 5000)]
    items = [request_item(1, msgs[0]), request_item(300, msgs[1], quiesce=True),
             request_item(1 << 40, msgs[2])]
    sender = new_uuid()
    (frame,) = pack_frames(sender_header(sender), items, 1 << 20)
    batch = RaftBatch()
    batch.ParseFromString(frame)
    assert batch.sender == sender
    assert [i.seq for i in batch.items] == [1, 300, 1 << 40]
    assert [i.quiesce for i in batch.items] == [False, True, False]
    assert [i.msg.SerializeToString() for i in batch.items] == msgs

    answers = [answer_item(7, msgs[0]),
               answer_item(8, status=Status.NOT_FOUND, error="Missing RAFT group ü"),
               answer_item(9, status=Status.INTERNAL, error="\udc80 lone surrogate")]
    (frame,) = pack_frames(b"", answers, 1 << 20)
    batch = RaftBatch()
    batch.ParseFromString(frame)
    assert not batch.sender
    assert [(i.seq, i.status, i.error) for i in batch.items][:2] == [
        (7, 0, ""), (8, Status.NOT_FOUND, "Missing RAFT group ü")]
    assert batch.items[0].msg.SerializeToString() == msgs[0]
    assert not batch.items[1].HasField("msg")
    assert batch.items[2].status == Status.INTERNAL


def test_frames_are_split_by_size_and_count() -> None:
    header = sender_header(new_uuid())
    items = [request_item(i + 1, b"x" * 1000) for i in range(50)]
    frames = pack_frames(header, items, 10_000)
    assert len(frames) > 5
    assert all(len(f) <= 10_000 for f in frames)
    seqs: list[int] = []
    for frame in frames:
        batch = RaftBatch()
        batch.ParseFromString(frame)
        seqs.extend(i.seq for i in batch.items)
    assert seqs == list(range(1, 51))
    assert len(pack_frames(header, items, 1 << 20, max_items=7)) == 8


# -- matching and order ---------------------------------------------------------------------------
async def test_many_groups_in_one_batch_replies_matched() -> None:
    async with pair() as (directory, a, b):
        groups = [new_uuid() for _ in range(40)]
        requests = [make_request(groups[i % 40], b.uuid, term=i + 1) for i in range(200)]
        replies = Replies()
        await send(a.transport, b.uuid, requests, replies)
        await replies.wait()
        for i, request in enumerate(requests):
            reply = replies.reply(i)
            assert reply.group_id == request.group_id
            assert reply.message.term == request.message.term
            assert reply.message.type == MsgType.APPEND_ENTRIES_RESPONSE
        assert link_of(a.transport, b.uuid) is not None  # it went over the stream
        assert sorted(r.message.term for r in b.handler.requests) == list(range(1, 201))
        assert directory.lookups == [b.uuid]


@pytest.mark.parametrize("kind", ["raft_step", "mixed_fast_and_slow"])
async def test_per_group_order_kept_over_pipelined_batches(kind: str) -> None:
    """1,200 requests of 4 groups in 12 batches, all in flight at once; the handler
    yields a varying number of times per request, so tasks would interleave."""
    handler: Any

    async def jittery(request: GroupEnvelope) -> GroupEnvelope:
        for _ in range(request.message.term % 3):
            await trio.lowlevel.checkpoint()
        return make_reply(request)

    if kind == "raft_step":
        handler = Watcher(jittery)
    else:  # step_nowait takes most; every 7th is declined and goes through raft_step
        handler = FastHandler(decline=lambda r: r.message.term % 7 == 0)
        handler.step = jittery
    groups = [new_uuid() for _ in range(4)]
    async with pair(handler) as (_, a, b):
        replies = Replies()
        term = 0
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                batch = []
                for _ in range(100):
                    term += 1
                    batch.append((make_request(groups[term % 4], b.uuid, term=term),
                                  replies.callback(term)))
                await a.transport.send_batch(b.uuid, batch, timeout=10, nursery=nursery)
        await replies.wait()
        assert all(replies.reply(t).message.term == t for t in range(1, term + 1))
        seen = handler.order if kind != "raft_step" else handler.requests
        assert len(seen) == 1200
        for group in groups:
            terms = [r.message.term for r in seen if r.group_id == group]
            assert terms == sorted(terms) and len(terms) == 300
        if kind != "raft_step":
            assert 0 < handler.fast_count < 1200


async def test_answers_out_of_order_are_still_matched() -> None:
    handler = FastHandler()
    handler.hold = True
    async with pair(handler) as (_, a, b):
        requests = [make_request(new_uuid(), b.uuid, term=i + 1) for i in range(30)]
        replies = Replies()
        await send(a.transport, b.uuid, requests, replies)
        await handler.wait_held(30)
        for request, respond in reversed(handler.held[10:]):
            respond(make_reply(request))
        await replies.wait_count(20)
        assert set(replies.results) == set(range(10, 30))
        for request, respond in handler.held[:10]:
            respond(make_reply(request))
            respond(make_reply(request))  # a second answer is ignored
        await replies.wait()
        for i in range(30):
            assert replies.reply(i).message.term == i + 1
            assert replies.reply(i).group_id == requests[i].group_id


# -- per-item errors ------------------------------------------------------------------------------
async def test_per_item_errors_do_not_affect_other_items() -> None:
    async def refuse_some(request: GroupEnvelope) -> GroupEnvelope:
        if request.message.term == 4:
            raise StepError(Status.NOT_FOUND, "Missing RAFT group")
        if request.message.term == 5:
            raise RuntimeError("boom")
        return make_reply(request)

    async with pair(Watcher(refuse_some)) as (_, a, b):
        response = Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2)
        requests = [
            make_request(GROUP, b.uuid, term=1),
            make_request(GROUP, new_uuid(), term=2),  # wrong intended_addr
            make_request("not-a-uuid", b.uuid, term=3),
            make_request(GROUP, b.uuid, term=4),
            make_request(GROUP, b.uuid, term=5),
            GroupEnvelope(GROUP, "", b.uuid, response),  # not a request: refused locally
            make_request(GROUP, b.uuid, term=7),
        ]
        replies = Replies()
        await send(a.transport, b.uuid, requests, replies)
        await replies.wait()
        assert replies.reply(0).message.term == 1
        assert replies.error(1).status == Status.INVALID_ARGUMENT
        assert replies.error(1).message.startswith("intended addr: [")
        assert replies.error(2).status == Status.INVALID_ARGUMENT
        assert replies.error(2).message == "Bad GroupID 'not-a-uuid'"
        assert replies.error(3).status == Status.NOT_FOUND
        assert replies.error(3).message == "Missing RAFT group"
        assert replies.error(4).status == Status.INTERNAL
        assert "RuntimeError: boom" in replies.error(4).message
        assert replies.error(5).status == Status.INVALID_ARGUMENT
        assert replies.reply(6).message.term == 7
        assert sorted(r.message.term for r in b.handler.requests) == [1, 4, 5, 7]


async def test_server_checks_every_item_like_raft_step() -> None:
    """Raw frames: items without a message, undecodable or non-request messages, wrong
    routing fields each get their own INVALID_ARGUMENT; the valid ones are served."""
    async with pair() as (_, _a, b):
        good = make_request(GROUP, b.uuid, term=9)
        response = GroupEnvelope(GROUP, "", b.uuid,
                                 Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2))
        bad_type = RaftBatchItem(seq=5)
        bad_type.msg.ParseFromString(request_pb(good))
        bad_type.msg.msg.base.type = 9999
        items = [
            RaftBatchItem(seq=1, msg=None),
            RaftBatchItem(seq=2, msg=group_msg_to_proto(GROUP, "", b.uuid, response.message)),
            RaftBatchItem(seq=3, msg=group_msg_to_proto(GROUP, "", new_uuid(), good.message)),
            RaftBatchItem(seq=4, msg=group_msg_to_proto("x", "", b.uuid, good.message)),
            bad_type,
            RaftBatchItem(seq=6, msg=group_msg_to_proto(GROUP, "", b.uuid, good.message)),
        ]
        client = await H2Client.connect(b.transport.port)
        try:
            sid = await client.send(request_headers(STREAM_PATH), raw_frame(*items), end=False)
            answers = {i.seq: i for i in await raw_answers(client, sid, 6)}
        finally:
            await client.aclose()
        statuses = {seq: (item.status, item.error) for seq, item in answers.items()}
        assert statuses[1] == (Status.INVALID_ARGUMENT, "Bad request: RaftBatchItem has no msg")
        assert statuses[2] == (Status.INVALID_ARGUMENT, "APPEND_ENTRIES_RESPONSE is not a request")
        assert statuses[3][0] == Status.INVALID_ARGUMENT
        assert statuses[3][1].startswith("intended addr: [")
        assert statuses[4] == (Status.INVALID_ARGUMENT, "Bad GroupID 'x'")
        assert statuses[5][0] == Status.INVALID_ARGUMENT
        assert statuses[5][1].startswith("Bad request: unknown message type")
        assert statuses[6][0] == Status.OK and answers[6].msg.msg.rc_response.accepted
        assert [r.message.term for r in b.handler.requests] == [9]


async def test_malformed_frame_ends_only_that_stream() -> None:
    async with pair() as (_, a, b):
        client = await H2Client.connect(b.transport.port)
        try:
            broken = await client.send(request_headers(STREAM_PATH),
                                       grpc_frame(b"\xff\xff\xff\xff"), end=False)
            reply = await client.reply(broken)
            assert reply.status == Status.INVALID_ARGUMENT
            assert reply.message.startswith("Bad request: undecodable RaftBatch")
            # the same connection still serves a RaftStep and a new stream
            step = await client.send(request_headers(RAFT_STEP_PATH),
                                     grpc_frame(request_pb(make_request(GROUP, b.uuid))))
            assert (await client.reply(step)).status == 0
            item = RaftBatchItem(seq=11)
            item.msg.ParseFromString(request_pb(make_request(GROUP, b.uuid, term=11)))
            fresh = await client.send(request_headers(STREAM_PATH), raw_frame(item), end=False)
            (answer,) = await raw_answers(client, fresh, 1)
            assert answer.seq == 11 and answer.status == 0
            client.conn.end_stream(fresh)
            await client.flush()
            assert (await client.reply(fresh)).status == 0  # ended by us: closed with OK
        finally:
            await client.aclose()
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.reply(0).message.accepted


async def test_frame_over_the_receive_limit_ends_the_stream_resource_exhausted() -> None:
    async with pair(max_message_size=64 * 1024) as (_, a, b):
        client = await H2Client.connect(b.transport.port)
        try:
            sid = await client.send(request_headers(STREAM_PATH),
                                    grpc_frame(b"\x00" * (65 * 1024)), end=False)
            reply = await client.reply(sid)
            assert reply.status == Status.RESOURCE_EXHAUSTED
        finally:
            await client.aclose()
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.reply(0).message.accepted


async def test_oversize_item_is_resource_exhausted_alone_and_big_batches_are_split() -> None:
    limit = 64 * 1024
    directory = Directory()
    async with trio.open_nursery() as nursery:
        a = await serve_node(nursery, directory, max_message_size=limit)
        b = await serve_node(nursery, directory, max_message_size=limit)
        requests = [
            make_request(GROUP, b.uuid, term=1, payload=b"s"),
            make_request(GROUP, b.uuid, term=2, payload=b"x" * (65 * 1024)),  # over the limit
            make_request(GROUP, b.uuid, term=3, payload=b"y" * (limit - 120)),  # over, framed
            *[make_request(GROUP, b.uuid, term=4 + i, payload=b"z" * 20_000) for i in range(10)],
        ]
        replies = Replies()
        await send(a.transport, b.uuid, requests, replies)
        await replies.wait()
        assert replies.error(1).status == Status.RESOURCE_EXHAUSTED
        assert replies.error(2).status == Status.RESOURCE_EXHAUSTED
        for i in (0, *range(3, 13)):
            assert replies.reply(i).message.accepted
        assert [r.message.term for r in b.handler.requests] == [1, *range(4, 14)]
        nursery.cancel_scope.cancel()


async def test_unanswered_requests_per_stream_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_module, "MAX_UNANSWERED", 4)
    handler = FastHandler()
    handler.hold = True
    async with pair(handler) as (_, a, b):
        replies = Replies()
        await send(a.transport, b.uuid,
                   [make_request(GROUP, b.uuid, term=i + 1) for i in range(10)], replies)
        await replies.wait_count(6)
        for key in range(4, 10):
            assert replies.error(key).status == Status.RESOURCE_EXHAUSTED
        assert len(handler.held) == 4
        for request, respond in handler.held:
            respond(make_reply(request))
            respond(make_reply(request))  # ignored: it does not free a second slot
        await replies.wait()
        assert [replies.reply(k).message.term for k in range(4)] == [1, 2, 3, 4]
        # answered requests free their slots: four more are taken, the fifth is refused
        handler.held.clear()
        replies = Replies()
        await send(a.transport, b.uuid,
                   [make_request(GROUP, b.uuid, term=i + 11) for i in range(5)], replies)
        await handler.wait_held(4)
        await replies.wait_count(1)
        assert replies.error(4).status == Status.RESOURCE_EXHAUSTED
        for request, respond in handler.held:
            respond(make_reply(request))
        await replies.wait()
        assert [replies.reply(k).message.term for k in range(4)] == [11, 12, 13, 14]


async def test_a_client_that_does_not_read_its_answers_is_not_read_either(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answers the client does not take (HTTP/2 flow control stops the server's writer)
    pile up only to the bound; then the server stops reading the client's frames."""
    monkeypatch.setattr(stream_module, "MAX_UNANSWERED", 4)
    handler = FastHandler()
    async with pair(handler) as (_, _a, b):
        client = await H2Client.connect(b.transport.port)
        try:
            sid = await client.send(request_headers(STREAM_PATH), b"", end=False)
            with trio.fail_after(5):  # the server's SETTINGS (its window) and our headers
                while not client.replies[sid].headers:
                    await client._read_once()
            total = 20_000
            for first in range(0, total, 100):
                items = []
                for seq in range(first + 1, first + 101):
                    item = RaftBatchItem(seq=seq)
                    item.msg.ParseFromString(request_pb(make_request(GROUP, b.uuid, term=seq)))
                    items.append(item)
                client.conn.send_data(sid, raw_frame(*items))
            await client.flush()
            await trio.testing.wait_all_tasks_blocked()
            taken = handler.fast_count
            assert 0 < taken < total // 2  # held back by the unread answers
            answers = await raw_answers(client, sid, total)  # reading lets it go on
        finally:
            await client.aclose()
        assert sorted(a.seq for a in answers) == list(range(1, total + 1))
        assert {a.status for a in answers} == {0}
        terms = [r.message.term for r in handler.order]
        assert terms == list(range(1, total + 1))


# -- security -------------------------------------------------------------------------------------
async def test_token_verifier_refuses_a_stream() -> None:
    directory = Directory()
    async with trio.open_nursery() as nursery:
        b = await serve_node(nursery, directory, token_verifier=StaticTokenVerifier("s3cret"))
        async with (
            GrpcTransport(server_uuid=new_uuid(), lookup_peer=directory) as stranger,
            GrpcTransport(server_uuid=new_uuid(), lookup_peer=directory,
                          token_client=StaticTokenClient("s3cret")) as member,
        ):
            replies = Replies()
            await send(stranger, b.uuid, [make_request(GROUP, b.uuid)] * 3, replies)
            await replies.wait()
            assert {replies.error(k).status for k in range(3)} == {Status.UNAUTHENTICATED}
            assert link_of(stranger, b.uuid) is None
            assert b.handler.requests == []

            replies = Replies()
            await send(member, b.uuid, [make_request(GROUP, b.uuid)], replies)
            await replies.wait()
            assert replies.reply(0).message.accepted
            assert link_of(member, b.uuid) is not None
        nursery.cancel_scope.cancel()


# -- peer loss and deadlines ----------------------------------------------------------------------
async def test_server_stopping_mid_stream_fails_pending_promptly_and_reports_the_loss() -> None:
    entered = trio.Event()

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError

    async with pair(Watcher(hang)) as (_, a, b):
        replies = Replies()
        await send(a.transport, b.uuid,
                   [make_request(new_uuid(), b.uuid, term=i + 1) for i in range(20)],
                   replies, timeout=60)
        with trio.fail_after(5):
            await entered.wait()
        stopped_at = trio.current_time()
        await b.stop()
        await replies.wait(within=5)
        assert {replies.error(k).status for k in range(20)} == {Status.UNAVAILABLE}
        assert max(replies.when.values()) - stopped_at < 2
        with trio.fail_after(5):
            await a.handler.lost_event.wait()
        assert a.handler.lost == [b.uuid]
        assert b.handler.lost == []  # b closed its own side: nothing lost from its view
        # the next batch reconnects (and fails: nobody listens there any more)
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.error(0).status == Status.UNAVAILABLE


async def test_client_vanishing_mid_stream_is_reported_by_the_server() -> None:
    entered = trio.Event()
    cancelled = trio.Event()

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError

    async with pair(Watcher(hang)) as (_, a, b):
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies, timeout=60)
        with trio.fail_after(5):
            await entered.wait()
        await a.stop()  # a's serve owned its channels: its connection to b goes
        with trio.fail_after(5):
            await b.handler.lost_event.wait()
            await cancelled.wait()  # the stream's handler tasks were cancelled
        assert b.handler.lost == [a.uuid]
        await replies.wait()
        assert replies.error(0).status == Status.UNAVAILABLE
        assert a.handler.lost == []


async def test_stream_reset_by_the_peer_fails_pending_and_reports_the_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server resets the RaftStream (here: a bug in its session); the connection stays,
    the next batch opens a new stream on it."""

    def broken(self: Any, data: bytes, nursery: trio.Nursery) -> None:
        raise RuntimeError("server bug")

    async with pair() as (directory, a, b):
        with monkeypatch.context() as patch:
            patch.setattr(stream_module.ServerSession, "on_frame", broken)
            replies = Replies()
            await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)] * 3, replies)
            await replies.wait()
        assert {replies.error(k).status for k in range(3)} == {Status.CANCELLED}
        assert "reset by peer" in replies.error(0).message
        assert a.handler.lost == [b.uuid]
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.reply(0).message.accepted
        assert directory.lookups == [b.uuid]


async def test_deadline_expiry_is_deadline_exceeded_and_the_stream_goes_on() -> None:
    slow_group = new_uuid()

    async def slow(request: GroupEnvelope) -> GroupEnvelope:
        if request.group_id == slow_group:
            await trio.sleep_forever()
        return make_reply(request)

    async with pair(Watcher(slow)) as (directory, a, b):
        replies = Replies()
        start = trio.current_time()
        await send(a.transport, b.uuid,
                   [make_request(slow_group, b.uuid), make_request(GROUP, b.uuid)],
                   replies, timeout=0.3)
        await replies.wait()
        assert replies.reply(1).message.accepted
        assert replies.error(0).status == Status.DEADLINE_EXCEEDED
        assert 0.3 <= replies.when[0] - start < 2
        link = link_of(a.transport, b.uuid)
        assert link is not None and link.core.pending == {}
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.reply(0).message.accepted
        assert link_of(a.transport, b.uuid) is link
        assert directory.lookups == [b.uuid]
        assert a.handler.lost == []


async def test_deadlines_of_different_timeouts_fire_in_time() -> None:
    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        await trio.sleep_forever()
        raise AssertionError

    async with pair(Watcher(hang)) as (_, a, b):
        replies = Replies()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            await a.transport.send_batch(b.uuid, [(make_request(GROUP, b.uuid),
                                                   replies.callback(0))],
                                         timeout=3.0, nursery=nursery)
            await trio.testing.wait_all_tasks_blocked()  # the sweeper sleeps until +3 s
            await a.transport.send_batch(b.uuid, [(make_request(GROUP, b.uuid),
                                                   replies.callback(1))],
                                         timeout=0.2, nursery=nursery)
        await replies.wait()
        assert replies.error(1).status == Status.DEADLINE_EXCEEDED
        assert replies.error(0).status == Status.DEADLINE_EXCEEDED
        assert replies.when[1] - start < 1.5 <= replies.when[0] - start


async def test_wrong_service_retires_the_channel_gracefully() -> None:
    """An INVALID_ARGUMENT answer retires the channel, as for RaftStep; the stream is
    half-closed once nothing is pending and the server ends it (no loss reported)."""
    async with pair() as (directory, a, b):
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, new_uuid()),
                                          make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.error(0).status == Status.INVALID_ARGUMENT
        assert replies.reply(1).message.accepted
        slot = a.transport.client._peers[b.uuid]
        channel = slot.channel
        assert channel is None or channel.retired
        if channel is not None:
            with trio.fail_after(5):
                await channel.finished.wait()
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.reply(0).message.accepted
        assert directory.lookups == [b.uuid, b.uuid]
        assert a.handler.lost == [] and b.handler.lost == []


async def test_silent_peer_channel_is_retired_after_a_quiet_timeout() -> None:
    """A peer that accepts TCP but never answers (host gone, no FIN): the stream never
    opens; batches time out, and once a PING went unanswered the channel is rebuilt."""
    async with pair() as (directory, a, _b):
        listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
        peer = new_uuid()
        directory.addresses[peer] = f"{LOCALHOST}:{listeners[0].socket.getsockname()[1]}"
        held: list[trio.SocketStream] = []

        async def black_hole(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            while True:
                held.append(await listeners[0].accept())

        async with trio.open_nursery() as nursery:
            await nursery.start(black_hole)
            for expected_lookups in (1, 1, 2):
                replies = Replies()
                await send(a.transport, peer, [make_request(GROUP, peer)], replies, timeout=0.2)
                await replies.wait()
                assert replies.error(0).status == Status.DEADLINE_EXCEEDED
                assert directory.lookups.count(peer) == expected_lookups
            # a sender cancelled while the stream opens: its callbacks are still answered
            replies = Replies()
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as senders:
                    senders.start_soon(send, a.transport, peer, [make_request(GROUP, peer)] * 2,
                                       replies)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            await replies.wait()
            assert {replies.error(k).status for k in range(2)} == {Status.CANCELLED}
            nursery.cancel_scope.cancel()
        for s in held:
            await s.aclose()
        await listeners[0].aclose()


class BlackHoleProxy:
    """A TCP proxy to ``port`` that can start dropping everything (a peer host gone without
    a FIN, a partitioned link)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.frozen = False

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream(LOCALHOST, self.target) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream,
                    scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                if not self.frozen:
                    await dst.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()


async def test_stream_to_a_vanished_host_is_retired_after_an_unanswered_ping() -> None:
    async with pair() as (directory, a, b):
        proxy = BlackHoleProxy(b.transport.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            directory.addresses[b.uuid] = f"{LOCALHOST}:{proxy.port}"
            replies = Replies()
            await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
            await replies.wait()
            assert replies.reply(0).message.accepted
            proxy.frozen = True
            for expected_lookups in (1, 1, 2):
                replies = Replies()
                await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies,
                           timeout=0.3)
                await replies.wait()
                assert replies.error(0).status == Status.DEADLINE_EXCEEDED
                assert directory.lookups.count(b.uuid) == expected_lookups
            assert a.handler.lost[:1] == [b.uuid]  # the stale link's end is a hint
            proxy.frozen = False
            # the connection made while frozen lost its preface: it fails, then a new one works
            outcomes = []
            for _ in range(3):
                replies = Replies()
                await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
                result = (await replies.wait())[0]
                outcomes.append(result)
                if isinstance(result, GroupEnvelope):
                    break
            assert isinstance(outcomes[-1], GroupEnvelope), outcomes
            nursery.cancel_scope.cancel()


async def test_a_write_stuck_on_flow_control_ends_at_the_deadline() -> None:
    """A peer that stops taking data (flow-control window exhausted): send_batch returns by
    the deadline and its requests fail DEADLINE_EXCEEDED (the half-written stream is dropped)."""
    limit = 64 * 1024  # the peer's stream window is twice that
    directory = Directory()
    async with trio.open_nursery() as nursery:
        a = await serve_node(nursery, directory, max_message_size=limit)
        b = await serve_node(nursery, directory, max_message_size=limit)
        proxy = BlackHoleProxy(b.transport.port)
        await nursery.start(proxy.run)
        directory.addresses[b.uuid] = f"{LOCALHOST}:{proxy.port}"
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        link = link_of(a.transport, b.uuid)
        proxy.frozen = True
        replies = Replies()
        start = trio.current_time()
        big = [make_request(GROUP, b.uuid, payload=b"x" * (limit - 1024)) for _ in range(6)]
        with trio.fail_after(3):
            await send(a.transport, b.uuid, big, replies, timeout=0.5)
        assert trio.current_time() - start < 2
        await replies.wait()
        assert {replies.error(k).status for k in range(6)} == {Status.DEADLINE_EXCEEDED}
        assert link.core.failed and not link.usable  # a new batch opens a new stream
        nursery.cancel_scope.cancel()


# -- fallback, quiesce, ping ----------------------------------------------------------------------
async def test_fallback_to_unary_against_a_peer_without_raft_stream() -> None:
    async with pair(enable_stream=False) as (directory, a, b):
        groups = [new_uuid() for _ in range(3)]
        replies = Replies()
        await send(a.transport, b.uuid,
                   [make_request(groups[i % 3], b.uuid, term=i + 1) for i in range(9)], replies)
        await replies.wait()
        assert [replies.reply(i).message.term for i in range(9)] == list(range(1, 10))
        channel = a.transport.client._peers[b.uuid].channel
        assert channel is not None and channel.stream_unsupported and channel.link is None
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.reply(0).message.accepted
        assert directory.lookups == [b.uuid]
        for group in groups:
            terms = [r.message.term for r in b.handler.requests if r.group_id == group]
            assert terms == sorted(terms) and len(terms) == 3


async def test_a_transport_without_stream_sends_unary() -> None:
    directory = Directory()
    async with trio.open_nursery() as nursery:
        a = await serve_node(nursery, directory, enable_stream=False)
        b = await serve_node(nursery, directory)
        replies = Replies()
        await send(a.transport, b.uuid, [make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert replies.reply(0).message.accepted
        assert link_of(a.transport, b.uuid) is None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("stream", [True, False])
async def test_quiesce_flag_round_trips_on_the_stream_only(stream: bool) -> None:
    directory = Directory()
    async with trio.open_nursery() as nursery:
        a = await serve_node(nursery, directory, enable_stream=stream)
        b = await serve_node(nursery, directory)
        quiet = GroupEnvelope(GROUP, "t", b.uuid, make_request(GROUP, b.uuid).message,
                              quiesce=True)
        replies = Replies()
        await send(a.transport, b.uuid, [quiet, make_request(GROUP, b.uuid)], replies)
        await replies.wait()
        assert [r.quiesce for r in b.handler.requests] == [stream, False]
        nursery.cancel_scope.cancel()


async def test_ping_live_and_dead_peers() -> None:
    assert GrpcTransport.supports_ping

    async def hang(request: GroupEnvelope) -> GroupEnvelope:
        await trio.sleep_forever()
        raise AssertionError

    async with pair(Watcher(hang)) as (directory, a, b):
        with trio.fail_after(2):
            await a.transport.ping(b.uuid, timeout=1)  # connects
            await a.transport.ping(b.uuid, timeout=1)  # busy handlers do not matter
        with closed_port() as port:
            dead = new_uuid()
            directory.addresses[dead] = f"{LOCALHOST}:{port}"
            with pytest.raises(TransportError) as info:
                await a.transport.ping(dead, timeout=1)
            assert info.value.status == Status.UNAVAILABLE
        with pytest.raises(TransportError) as info:
            await a.transport.ping("nobody", timeout=1)
        assert info.value.status == Status.UNAVAILABLE

        # a peer that accepts TCP but never answers: DEADLINE_EXCEEDED, channel retired
        listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
        silent = new_uuid()
        directory.addresses[silent] = f"{LOCALHOST}:{listeners[0].socket.getsockname()[1]}"
        held: list[trio.SocketStream] = []

        async def black_hole(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            while True:
                held.append(await listeners[0].accept())

        async with trio.open_nursery() as nursery:
            await nursery.start(black_hole)
            with pytest.raises(TransportError) as info:
                await a.transport.ping(silent, timeout=0.3)
            assert info.value.status == Status.DEADLINE_EXCEEDED
            stale = a.transport.client._peers[silent].channel
            assert stale is None or stale.retired
            nursery.cancel_scope.cancel()
        for s in held:
            await s.aclose()
        await listeners[0].aclose()

        await b.stop()
        with pytest.raises(TransportError) as info:
            await a.transport.ping(b.uuid, timeout=1)
        assert info.value.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_channel_that_only_pings_outlives_the_servers_handshake_timeout(
    stream: bool,
) -> None:
    """A server drops a connection that makes no call within its handshake_timeout; ping()
    gives its channel an idle RaftStream, so a peer that is only pinged keeps its channel."""
    directory = Directory()
    async with trio.open_nursery() as nursery:
        a = await serve_node(nursery, directory, enable_stream=stream)
        b = await serve_node(nursery, directory, handshake_timeout=0.3)
        await a.transport.ping(b.uuid, timeout=1)
        channel = a.transport.client._peers[b.uuid].channel
        await trio.sleep(0.8)  # time passes: the server's handshake deadline is long gone
        await a.transport.ping(b.uuid, timeout=1)
        if stream:
            assert a.transport.client._peers[b.uuid].channel is channel
            assert a.handler.lost == []
        else:  # without RaftStream nothing makes a call: dropped, reported, then rebuilt
            assert a.transport.client._peers[b.uuid].channel is not channel
            assert a.handler.lost == [b.uuid]
        nursery.cancel_scope.cancel()


async def test_a_ping_waiting_for_its_ack_fails_when_the_connection_is_lost() -> None:
    """The PING waits for its ACK; a connection lost meanwhile fails it with UNAVAILABLE
    (promptly, not at its deadline)."""
    async with pair() as (directory, a, b), trio.open_nursery() as nursery:
        proxy = BlackHoleProxy(b.transport.port)
        proxy_scope = trio.CancelScope()

        async def run_proxy(task_status: trio.TaskStatus[None]) -> None:
            with proxy_scope:
                await proxy.run(task_status=task_status)

        await nursery.start(run_proxy)
        directory.addresses[b.uuid] = f"{LOCALHOST}:{proxy.port}"
        await a.transport.ping(b.uuid, timeout=1)
        proxy.frozen = True  # no more ACKs
        outcome: list[TransportError] = []

        async def pinger() -> None:
            with pytest.raises(TransportError) as info:
                await a.transport.ping(b.uuid, timeout=30)
            outcome.append(info.value)

        with trio.fail_after(5):
            async with trio.open_nursery() as pinging:
                pinging.start_soon(pinger)
                await trio.testing.wait_all_tasks_blocked()
                assert not outcome
                proxy_scope.cancel()  # the proxy closes the connection
        assert outcome[0].status == Status.UNAVAILABLE
        with trio.fail_after(5):
            await a.handler.lost_event.wait()
        assert a.handler.lost == [b.uuid]


# -- ownership ------------------------------------------------------------------------------------
async def test_no_task_outlives_serve_or_aclose() -> None:
    before = count_tasks()
    held = FastHandler()
    held.hold = True
    directory = Directory()
    replies = Replies()
    async with trio.open_nursery() as nursery:
        a = await serve_node(nursery, directory)
        b = await serve_node(nursery, directory, held)
        async with GrpcTransport(server_uuid=new_uuid(), lookup_peer=directory) as client:
            await send(client, b.uuid, [make_request(GROUP, b.uuid)], replies, timeout=60)
            await send(a.transport, b.uuid, [make_request(new_uuid(), b.uuid)], replies,
                       timeout=60, first_key=1)
            await send(b.transport, a.uuid, [make_request(GROUP, a.uuid)], replies,
                       timeout=60, first_key=2)
            await held.wait_held(2)
            assert count_tasks() > before + 6
        # leaving the client's block ended its link: its request failed
        assert replies.error(0).status == Status.UNAVAILABLE
        await a.transport.aclose()
        assert replies.error(1).status == Status.UNAVAILABLE
        nursery.cancel_scope.cancel()
    await replies.wait()
    assert replies.reply(2).message.accepted
    assert count_tasks() == before


async def test_callbacks_raising_do_not_break_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    async with pair() as (_, a, b):
        replies = Replies()

        def explode(result: GroupEnvelope | TransportError) -> None:
            raise ZeroDivisionError

        async with trio.open_nursery() as nursery:
            await a.transport.send_batch(
                b.uuid,
                [(make_request(GROUP, b.uuid), explode),
                 (make_request(GROUP, b.uuid), replies.callback(0))],
                timeout=5, nursery=nursery)
        await replies.wait()
        assert replies.reply(0).message.accepted
        assert "ZeroDivisionError" in caplog.text


def test_fake_handlers_implement_the_optional_protocols() -> None:
    assert isinstance(FastHandler(), FastStepHandler)
    assert isinstance(Watcher(), PeerWatcher)
    assert not isinstance(Watcher(), FastStepHandler)
