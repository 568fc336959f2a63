"""RaftStream: batches of RaftStep requests and their answers on one long-lived HTTP/2 stream.

The wire (``proto/messaging_service.proto``): ``Messaging/RaftStream(stream RaftBatch) returns
(stream RaftBatch)``.  A client frame is one ``RaftBatch`` (``sender``: the client's uuid) of
``RaftBatchItem`` requests, each with a ``seq`` of the client's choosing; an answer frame is a
``RaftBatch`` of items echoing those ``seq`` with either the reply (``msg``) or a per-item gRPC
``status`` and ``error``.  Answers come in any order, batched like the requests.

This module is the part of :mod:`nuraft_mesg.transport.grpc`'s RaftStream that does not touch
the HTTP/2 layer:

* frame encoding (:func:`pack_frames`, :func:`request_item`, :func:`answer_item`): items are
  serialized by hand, around payloads that the codec already serialized, so that a frame is
  built with one ``join`` and its exact size is known before it is sent (decoding uses the
  generated ``RaftBatch``);
* :class:`ClientLink`: the client's pending requests (``seq`` -> callback and deadline), their
  deadlines, and the matching of answer frames to callbacks;
* :class:`ServerSession`: the server's side of one stream: per-item checks (RaftStep's),
  hand-off to the handler in per-group order (:meth:`FastStepHandler.step_nowait` first,
  ``raft_step`` in a per-group task otherwise), per-item errors, the answer outbox and the
  bounds on what a client can make the server hold.

The tasks that read and write the stream live in :mod:`~nuraft_mesg.transport.grpc.server`
(server side) and :mod:`~nuraft_mesg.transport.grpc.channel` (client side).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Final

import trio
from google.protobuf.message import DecodeError

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.transport._proto.messaging_service_pb2 import RaftBatch, RaftBatchItem
from nuraft_mesg.transport.base import (
    FastStepHandler,
    ReplyCallback,
    Status,
    StepError,
    StepHandler,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope, encode_group_msg, group_msg_from_proto

__all__ = [
    "MAX_FRAME_ITEMS",
    "MAX_UNANSWERED",
    "ClientLink",
    "ServerSession",
    "answer_item",
    "check_request",
    "deliver",
    "encode_reply",
    "is_uuid",
    "pack_frames",
    "request_item",
    "sender_header",
]

log = logging.getLogger(__name__)

MAX_UNANSWERED: Final = 65_536
"""Requests of one stream that the server holds unanswered (in its handler) at most; beyond
it, a request is answered RESOURCE_EXHAUSTED at once.  Answers not yet written are bounded
by the same number: the server stops reading the stream until they are sent."""
MAX_FRAME_ITEMS: Final = 8_192
"""Items per frame sent (a larger batch is split)."""
MAX_FRAME_ITEMS_ACCEPTED: Final = MAX_UNANSWERED
"""A frame with more items ends the stream (RESOURCE_EXHAUSTED)."""

Item = tuple[int, tuple[bytes, ...]]
"""A serialized ``RaftBatchItem``: its length and its parts (joined when the frame is)."""


# -- frame encoding -----------------------------------------------------------------------------
_SMALL_VARINTS: Final = tuple(bytes((v,)) for v in range(0x80))


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _seq_field(seq: int) -> bytes:
    return b"\x08" + _varint(seq) if seq else b""  # RaftBatchItem.seq = 1 (varint)


def request_item(seq: int, msg: bytes, quiesce: bool = False) -> Item:
    """A request item: ``msg`` is a serialized ``RaftGroupMsg``."""
    head = _seq_field(seq) + b"\x12" + _varint(len(msg))  # msg = 2 (length-delimited)
    tail = b"\x28\x01" if quiesce else b""  # quiesce = 5 (varint)
    return len(head) + len(msg) + len(tail), (head, msg, tail)


def answer_item(seq: int, msg: bytes = b"", status: Status = Status.OK, error: str = "") -> Item:
    """An answer item: the serialized reply ``msg``, or a non-OK ``status`` with ``error``."""
    if status != Status.OK:
        text = error.encode("utf-8", "replace")  # proto3 strings must be UTF-8
        head = (
            _seq_field(seq)
            + b"\x18" + _varint(int(status))  # status = 3 (varint)
            + (b"\x22" + _varint(len(text)) + text if text else b"")  # error = 4
        )
        return len(head), (head,)
    head = _seq_field(seq) + b"\x12" + _varint(len(msg))
    return len(head) + len(msg), (head, msg)


def sender_header(sender: str) -> bytes:
    """``RaftBatch.sender`` (field 1), the start of every client frame."""
    data = sender.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def framed_size(header: bytes, item: Item) -> int:
    """Size of a frame holding only ``item``."""
    return len(header) + 1 + len(_varint(item[0])) + item[0]


def pack_frames(
    header: bytes, items: Sequence[Item], limit: int, max_items: int = MAX_FRAME_ITEMS
) -> list[bytes]:
    """Serialized ``RaftBatch`` frames holding ``items`` in order, each at most ``limit``
    bytes and ``max_items`` items (an item alone larger than ``limit`` still gets a frame:
    callers check :func:`framed_size` first)."""
    frames: list[bytes] = []
    parts: list[bytes] = [header]
    size = len(header)
    count = 0
    for length, item_parts in items:
        prefix = b"\x12" + _varint(length)  # RaftBatch.items = 2 (length-delimited)
        grown = len(prefix) + length
        if count and (size + grown > limit or count >= max_items):
            frames.append(b"".join(parts))
            parts = [header]
            size = len(header)
            count = 0
        parts.append(prefix)
        parts.extend(item_parts)
        size += grown
        count += 1
    if count:
        frames.append(b"".join(parts))
    return frames


def parse_frame(data: bytes) -> RaftBatch:
    """Decode one frame; raises :class:`BadRequest` if it is not a ``RaftBatch``."""
    batch = RaftBatch()
    try:
        batch.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest(f"undecodable RaftBatch: {exc}") from None
    return batch


# -- checks and replies shared with RaftStep ---------------------------------------------------
def is_uuid(text: str) -> bool:
    """Whether ``text`` parses as a uuid (group ids and node ids on the wire)."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def check_request(
    request: GroupEnvelope,
    our_uuid: uuid.UUID,
    our_text: str,
    known_groups: set[str] | None = None,
) -> str | None:
    """RaftStep's routing checks; returns the INVALID_ARGUMENT message, or None if fine.

    ``known_groups`` (optional) caches group ids already found to be uuids; an
    ``intended_addr`` spelled exactly as ``our_text`` needs no parsing either."""
    group_id = request.group_id
    if known_groups is None or group_id not in known_groups:
        if not is_uuid(group_id):
            return f"Bad GroupID {group_id!r}"
        if known_groups is not None:
            if len(known_groups) >= _KNOWN_GROUPS_MAX:
                known_groups.clear()
            known_groups.add(group_id)
    intended = request.intended_addr
    if intended != our_text:
        if not is_uuid(intended):
            return f"Bad intended addr {intended!r}"
        if uuid.UUID(intended) != our_uuid:
            return f"intended addr: [{intended}], our addr: [{our_text}]"
    if not request.message.type.is_request:
        return f"{request.message.type.name} is not a request"
    return None


_KNOWN_GROUPS_MAX: Final = 65_536


def encode_reply(group_id: str, reply: GroupEnvelope, limit: int) -> tuple[Status, str, bytes]:
    """The handler's ``reply`` to a request of ``group_id``, serialized (at most ``limit``
    bytes); an unusable reply is INTERNAL (logged), an oversize one RESOURCE_EXHAUSTED."""
    try:
        if reply.message.type.is_request:
            raise BadRequest(f"{reply.message.type.name} is not a response")
        payload = encode_group_msg(group_id, "", "", reply.message, reply.dest_addr)
    except Exception as exc:  # BadRequest, or not a GroupEnvelope at all
        log.error("RaftStep handler returned an unusable reply: %r", exc)
        return Status.INTERNAL, f"cannot encode reply: {exc}", b""
    if len(payload) > limit:
        return (
            Status.RESOURCE_EXHAUSTED,
            f"reply of {len(payload)} bytes is larger than the maximum send size ({limit})",
            b"",
        )
    return Status.OK, "", payload


def step_error_status(exc: StepError) -> tuple[Status, str]:
    if exc.status == Status.OK:
        return Status.INTERNAL, f"StepError without an error status: {exc.message}"
    return exc.status, exc.message


def deliver(callback: ReplyCallback, result: GroupEnvelope | TransportError) -> None:
    """Call a reply callback; its exceptions are logged, never raised into the transport."""
    try:
        callback(result)
    except Exception:
        log.exception("RaftStream reply callback %r failed", callback)


def decode_answer(peer: str, item: RaftBatchItem) -> GroupEnvelope | TransportError:
    """An answer item -> the reply, or the error for its callback."""
    status = item.status
    if status != Status.OK:
        try:
            code = Status(status)
        except ValueError:
            code = Status.UNKNOWN
        return TransportError(code, item.error)
    if not item.HasField("msg"):
        return TransportError(Status.INTERNAL, f"answer from {peer} without a reply")
    try:
        reply = group_msg_from_proto(item.msg)
    except BadRequest as exc:
        return TransportError(Status.INTERNAL, f"malformed reply from {peer}: {exc}")
    if reply.message.type.is_request:
        return TransportError(Status.INTERNAL, f"reply from {peer} is a {reply.message.type.name}")
    return reply


# -- client ---------------------------------------------------------------------------------------
class ClientLink:
    """The requests a client sent on one RaftStream and not yet seen answered.

    ``pending`` maps ``seq`` to ``(callback, deadline, timeout)``; a heap of deadlines (with
    lazy deletion, compacted when it outgrows ``pending``) tells the sweeper when to wake.
    Every callback registered here is called exactly once: by an answer, by :meth:`expire`
    or by :meth:`fail_all`.
    """

    def __init__(self, peer: str, sender: str, max_send: int) -> None:
        self.peer = peer
        self.header = sender_header(sender)
        self.max_send = max_send
        self.pending: dict[int, tuple[ReplyCallback, float, float]] = {}
        self._heap: list[tuple[float, int]] = []
        self._next_seq = 1
        self.failure: TransportError | None = None

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def prepare(
        self,
        requests: Sequence[tuple[bytes, bool, ReplyCallback]],
        deadline: float,
        timeout: float,
    ) -> tuple[list[bytes], list[int]]:
        """Register ``(payload, quiesce, callback)`` requests; returns the frames to send
        and the registered seqs.  A request too large for a frame fails at once."""
        items: list[Item] = []
        seqs: list[int] = []
        pending = self.pending
        heap = self._heap
        header = self.header
        limit = self.max_send
        seq = self._next_seq
        for payload, quiesce, callback in requests:
            item = request_item(seq, payload, quiesce)
            size = framed_size(header, item)
            if size > limit:
                deliver(callback, TransportError(
                    Status.RESOURCE_EXHAUSTED,
                    f"request of {size} bytes (framed) is larger than the maximum send size "
                    f"({limit})",
                ))
                continue
            pending[seq] = (callback, deadline, timeout)
            heapq.heappush(heap, (deadline, seq))
            items.append(item)
            seqs.append(seq)
            seq += 1
        self._next_seq = seq
        if len(heap) > 2 * len(pending) + 1024:
            self._heap = [(entry[1], s) for s, entry in pending.items()]
            heapq.heapify(self._heap)
        return pack_frames(header, items, limit), seqs

    def on_frame(self, data: bytes) -> str | None:
        """Deliver the answers of one frame; unknown seqs are ignored.  Returns the message
        of an INVALID_ARGUMENT answer if there was one (the channel is then suspect).
        Raises :class:`BadRequest` for an undecodable frame."""
        batch = parse_frame(data)
        pending = self.pending
        peer = self.peer
        bad_service: str | None = None
        for item in batch.items:
            entry = pending.pop(item.seq, None)
            if entry is None:
                continue  # expired, or never ours
            result = decode_answer(peer, item)
            if isinstance(result, TransportError) and result.status == Status.INVALID_ARGUMENT:
                bad_service = result.message
            deliver(entry[0], result)
        return bad_service

    def next_deadline(self) -> float:
        heap = self._heap
        pending = self.pending
        while heap:
            deadline, seq = heap[0]
            entry = pending.get(seq)
            if entry is not None and entry[1] == deadline:
                return deadline
            heapq.heappop(heap)
        return math.inf

    def expire(self, now: float) -> float | None:
        """Fail every request whose deadline has passed (DEADLINE_EXCEEDED); returns the
        longest timeout among them (None if none expired)."""
        heap = self._heap
        pending = self.pending
        longest: float | None = None
        while heap and heap[0][0] <= now:
            deadline, seq = heapq.heappop(heap)
            entry = pending.get(seq)
            if entry is None or entry[1] != deadline:
                continue
            del pending[seq]
            timeout = entry[2]
            longest = timeout if longest is None else max(longest, timeout)
            deliver(entry[0], TransportError(
                Status.DEADLINE_EXCEEDED, f"RaftStep to {self.peer} timed out after {timeout:g}s"
            ))
        return longest

    def fail(self, seqs: Sequence[int], error: TransportError) -> None:
        """Fail these requests (if still pending) with ``error``."""
        for seq in seqs:
            entry = self.pending.pop(seq, None)
            if entry is not None:
                deliver(entry[0], error)

    def fail_all(self, error: TransportError) -> None:
        """The stream is gone: every pending request fails with ``error``; nothing more is
        registered afterwards (:attr:`failure` is set)."""
        if self.failure is None:
            self.failure = error
        pending, self.pending = self.pending, {}
        self._heap = []
        for callback, _, _ in pending.values():
            deliver(callback, error)


# -- server ---------------------------------------------------------------------------------------
_Queued = tuple[GroupEnvelope, Callable[[GroupEnvelope | StepError], None], bool]
"""A request waiting for its group's worker: the request, its responder, and whether
``step_nowait`` was already tried (and declined) for it."""


class ServerSession:
    """The server's side of one RaftStream (see the module doc).

    :meth:`on_frame` checks each item and hands it to the handler; answers accumulate in an
    outbox that the stream's writer drains with :meth:`take_frames`.  Requests of one group
    reach the handler in the order they arrived: ``step_nowait`` when the handler has it and
    nothing of that group is queued, else a per-group queue served by one task (in the
    session's nursery) that calls ``step_nowait`` or ``await raft_step`` for each in turn.
    """

    def __init__(
        self,
        handler: StepHandler,
        our_uuid: uuid.UUID,
        our_text: str,
        max_send: int,
        *,
        max_unanswered: int | None = None,
    ) -> None:
        self.handler = handler
        self._fast = handler.step_nowait if isinstance(handler, FastStepHandler) else None
        self._our_uuid = our_uuid
        self._our_text = our_text
        self._known_groups: set[str] = set()
        self.max_send = max_send
        self.max_unanswered = MAX_UNANSWERED if max_unanswered is None else max_unanswered
        self.sender = ""
        """The client's uuid (from its frames), for ``peer_lost``."""
        self.waiting: dict[int, int] = {}
        """Requests in the handler: ticket -> client seq."""
        self._tickets = 0
        self._queues: dict[str, collections.deque[_Queued]] = {}
        self.outbox: list[Item] = []
        self._sending = 0
        self._output = trio.Event()
        self._drained = trio.Event()
        self.idle = trio.Event()
        """Set once the client has ended its side and everything is answered and written."""
        self.ended = False
        self.closed = False
        self._nursery: trio.Nursery | None = None

    # -- input ---------------------------------------------------------------------------------
    def on_frame(self, data: bytes, nursery: trio.Nursery) -> tuple[Status, str] | None:
        """Take one frame; returns the status that ends the stream if it is unacceptable."""
        try:
            batch = parse_frame(data)
        except BadRequest as exc:
            return Status.INVALID_ARGUMENT, f"Bad request: {exc}"
        if len(batch.items) > MAX_FRAME_ITEMS_ACCEPTED:
            return (
                Status.RESOURCE_EXHAUSTED,
                f"frame of {len(batch.items)} items (at most {MAX_FRAME_ITEMS_ACCEPTED})",
            )
        if batch.sender:
            self.sender = batch.sender
        self._nursery = nursery
        for item in batch.items:
            self._take(item)
        return None

    def _take(self, item: RaftBatchItem) -> None:
        seq = item.seq
        if len(self.waiting) >= self.max_unanswered:
            self._answer(seq, Status.RESOURCE_EXHAUSTED,
                         f"more than {self.max_unanswered} requests unanswered on this stream")
            return
        if not item.HasField("msg"):
            self._answer(seq, Status.INVALID_ARGUMENT, "Bad request: RaftBatchItem has no msg")
            return
        try:
            request = group_msg_from_proto(item.msg)
        except BadRequest as exc:
            self._answer(seq, Status.INVALID_ARGUMENT, f"Bad request: {exc}")
            return
        problem = check_request(request, self._our_uuid, self._our_text, self._known_groups)
        if problem is not None:
            self._answer(seq, Status.INVALID_ARGUMENT, problem)
            return
        if item.quiesce:
            request = dataclasses.replace(request, quiesce=True)
        ticket = self._tickets
        self._tickets = ticket + 1
        self.waiting[ticket] = seq
        group_id = request.group_id
        respond = functools.partial(self._respond, ticket, group_id)
        queue = self._queues.get(group_id)
        tried = False
        if queue is None:
            if self._fast is not None:
                if self._try_fast(request, respond):
                    return
                tried = True
            queue = self._queues[group_id] = collections.deque()
            assert self._nursery is not None
            self._nursery.start_soon(self._serve_group, group_id, queue)
        queue.append((request, respond, tried))

    def _try_fast(
        self, request: GroupEnvelope, respond: Callable[[GroupEnvelope | StepError], None]
    ) -> bool:
        assert self._fast is not None
        try:
            return bool(self._fast(request, respond))
        except Exception as exc:
            log.exception("step_nowait failed (group %s)", request.group_id)
            respond(StepError(Status.INTERNAL, f"RaftStep failed: {type(exc).__name__}: {exc}"))
            return True

    async def _serve_group(self, group_id: str, queue: collections.deque[_Queued]) -> None:
        try:
            while queue:
                request, respond, tried = queue[0]
                if tried or self._fast is None or not self._try_fast(request, respond):
                    result: GroupEnvelope | StepError
                    try:
                        result = await self.handler.raft_step(request)
                    except StepError as exc:
                        result = exc
                    except Exception as exc:
                        log.exception("RaftStep handler failed (group %s)", group_id)
                        result = StepError(
                            Status.INTERNAL, f"RaftStep failed: {type(exc).__name__}: {exc}"
                        )
                    respond(result)
                queue.popleft()
        finally:
            if self._queues.get(group_id) is queue:
                del self._queues[group_id]

    # -- answers -------------------------------------------------------------------------------
    def _respond(self, ticket: int, group_id: str, result: GroupEnvelope | StepError) -> None:
        seq = self.waiting.pop(ticket, None)
        if seq is None or self.closed:
            return  # answered already, or the stream is gone
        if isinstance(result, StepError):
            status, message = step_error_status(result)
            self._answer(seq, status, message)
            return
        status, message, payload = encode_reply(group_id, result, self.max_send)
        if status != Status.OK:
            self._answer(seq, status, message)
            return
        item = answer_item(seq, payload)
        size = framed_size(b"", item)
        if size > self.max_send:
            self._answer(seq, Status.RESOURCE_EXHAUSTED,
                         f"reply of {size} bytes (framed) is larger than the maximum send size "
                         f"({self.max_send})")
            return
        self._push(item)

    def _answer(self, seq: int, status: Status, message: str) -> None:
        self._push(answer_item(seq, status=status, error=message))

    def _push(self, item: Item) -> None:
        self.outbox.append(item)
        self._output.set()

    @property
    def backlogged(self) -> bool:
        """Too many answers not yet written: stop reading until :meth:`wait_drained`."""
        return len(self.outbox) + self._sending >= self.max_unanswered

    async def wait_drained(self) -> None:
        while self.backlogged:
            self._drained = trio.Event()
            await self._drained.wait()

    async def wait_output(self) -> None:
        while not self.outbox:
            self._output = trio.Event()
            await self._output.wait()

    def take_frames(self) -> list[bytes]:
        """Everything in the outbox, as frames; call :meth:`written` once they are sent."""
        items, self.outbox = self.outbox, []
        self._sending = len(items)
        return pack_frames(b"", items, self.max_send)

    def written(self) -> None:
        self._sending = 0
        if not self.backlogged:
            self._drained.set()
        self._check_idle()

    def end(self) -> None:
        """The client ended its side: answer what is pending, then :attr:`idle`."""
        self.ended = True
        self._check_idle()

    def _check_idle(self) -> None:
        if self.ended and not self.waiting and not self.outbox and not self._sending:
            self.idle.set()

    def close(self) -> None:
        """The stream is over: late answers are dropped."""
        self.closed = True
        self.waiting.clear()
        self.outbox = []
