"""Conversion between the core's value types and nuraft_mesg's protobuf messages.

This is the only module that maps :class:`~nuraft_mesg.raft.types.Message` /
:class:`~nuraft_mesg.raft.types.LogEntry` onto ``RaftMessage`` / ``RaftGroupMsg`` (see
``proto/*.proto``), so the sans-IO core never touches generated code.

Wire rules (inventory §2.1/§2.2):

* a request fills ``rc_request``, a response fills ``rc_response`` (``MsgType.is_request``
  decides which); the other half is never sent;
* ``result_code`` travels negated (``ResultCode.wire``); an unknown wire value decodes as
  ``FAILED``;
* ``batch_size_hint`` is NuRaft's signed int64 carried in a uint64 (two's complement);
* ``context`` is sent only when non-empty; ``dest_addr`` exists only on responses;
* ``results`` (field 7, an extension C++ nodes ignore) carries an applied client_request's
  per-entry results;
* ``read_id`` (field 16 of both halves, an extension C++ nodes ignore and never echo) carries
  the leader's heartbeat round for reads and the read_index request id (docs/reads.md); the
  read_index message types (101, 102) exist only between Python nodes.

Everything decoded from the network is validated: malformed input raises
:class:`~nuraft_mesg.errors.BadRequest` and nothing else.  Encoding a message whose fields do
not fit the wire (negative or too-large terms, out-of-range ids) raises ``BadRequest`` too.

This is the hot path: protobuf objects are filled in place, field by field, without reflection.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from nuraft_mesg.errors import BadRequest, ResultCode
from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport._proto.messaging_service_pb2 import RaftGroupMsg
from nuraft_mesg.transport._proto.raft_types_pb2 import RaftMessage

__all__ = [
    "GroupEnvelope",
    "decode_group_msg",
    "encode_group_msg",
    "group_msg_from_proto",
    "group_msg_to_proto",
    "message_from_proto",
    "message_to_proto",
]

MAX_TERM = (1 << 63) - 1
"""Largest term or log index accepted on the wire (NuRaft's are signed 64-bit internally)."""

_U64_MASK = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_SIGN = 1 << 63
_U64_SPAN = 1 << 64

_MSG_TYPES: dict[int, MsgType] = {int(t): t for t in MsgType}
_LOG_TYPES: dict[int, LogType] = {int(t): t for t in LogType}
_REQUEST_TYPES: frozenset[MsgType] = frozenset(t for t in MsgType if t.is_request)


@dataclass(slots=True, frozen=True)
class GroupEnvelope:
    """A decoded ``RaftGroupMsg``: the routing fields plus the Raft message inside."""

    group_id: str
    group_type: str
    intended_addr: str
    message: Message
    dest_addr: str = ""
    quiesce: bool = False
    """Runtime hint, not part of ``RaftGroupMsg``: this heartbeat is the leader's last before
    its group goes quiet (see :mod:`nuraft_mesg.group`).  Carried only by ``RaftStream``
    batches; a unary RaftStep drops it (the follower then simply keeps its timers)."""


# -- encoding ---------------------------------------------------------------------------------
def _fill(pb: RaftMessage, msg: Message, dest_addr: str) -> None:
    """Write ``msg`` into the empty ``pb`` in place."""
    mtype = msg.type
    try:
        if msg.term > MAX_TERM:
            raise BadRequest(f"term {msg.term} does not fit the wire")
        base = pb.base
        base.term = msg.term
        base.type = mtype
        base.src = msg.src
        base.dest = msg.dest
        if mtype in _REQUEST_TYPES:
            if dest_addr:
                raise BadRequest("dest_addr can only be sent on a response")
            if max(msg.last_log_term, msg.last_log_index, msg.commit_index) > MAX_TERM:
                raise BadRequest("log term/index does not fit the wire")
            req = pb.rc_request
            req.last_log_term = msg.last_log_term
            req.last_log_index = msg.last_log_index
            req.commit_index = msg.commit_index
            if msg.read_id:
                req.read_id = msg.read_id
            if msg.entries:
                add = req.log_entries.add
                for entry in msg.entries:
                    if entry.term > MAX_TERM:
                        raise BadRequest(f"entry term {entry.term} does not fit the wire")
                    add(
                        term=entry.term,
                        type=entry.type,
                        buffer=entry.buffer,
                        timestamp=entry.timestamp,
                    )
        else:
            if msg.next_index > MAX_TERM:
                raise BadRequest(f"next_index {msg.next_index} does not fit the wire")
            hint = msg.batch_size_hint
            if not _I64_MIN <= hint <= MAX_TERM:
                raise BadRequest(f"batch_size_hint {hint} does not fit in int64")
            resp = pb.rc_response
            resp.next_index = msg.next_index
            resp.accepted = msg.accepted
            if msg.context:
                resp.context = msg.context
            if dest_addr:
                resp.dest_addr = dest_addr
            resp.result_code = msg.result_code.wire  # type: ignore[assignment]
            resp.batch_size_hint = hint & _U64_MASK
            if msg.results:
                resp.results.extend(msg.results)
            if msg.read_id:
                resp.read_id = msg.read_id
    except (ValueError, TypeError) as exc:
        # protobuf's own range/type checks: negative unsigned values, ids outside int32, ...
        raise BadRequest(f"cannot encode {mtype.name}: {exc}") from None


def message_to_proto(msg: Message, dest_addr: str = "") -> RaftMessage:
    """Build the ``RaftMessage`` for ``msg``.

    ``dest_addr`` (the UUID of the server named by ``msg.dest``, used for leader redirects) is
    only allowed on responses.
    """
    pb = RaftMessage()
    _fill(pb, msg, dest_addr)
    return pb


def group_msg_to_proto(
    group_id: str,
    group_type: str,
    intended_addr: str,
    msg: Message,
    dest_addr: str = "",
) -> RaftGroupMsg:
    """Build the ``RaftGroupMsg`` that carries ``msg`` for group ``group_id``."""
    pb = RaftGroupMsg()
    if group_id:
        pb.group_id = group_id
    if intended_addr:
        pb.intended_addr = intended_addr
    if group_type:
        pb.group_type = group_type
    _fill(pb.msg, msg, dest_addr)
    return pb


def encode_group_msg(
    group_id: str,
    group_type: str,
    intended_addr: str,
    msg: Message,
    dest_addr: str = "",
) -> bytes:
    """Serialized :func:`group_msg_to_proto`."""
    return group_msg_to_proto(
        group_id, group_type, intended_addr, msg, dest_addr
    ).SerializeToString()


# -- decoding ---------------------------------------------------------------------------------
def message_from_proto(pb: RaftMessage) -> tuple[Message, str]:
    """Decode and validate a ``RaftMessage``; returns ``(message, dest_addr)``.

    ``dest_addr`` is ``""`` for requests.  Raises :class:`BadRequest` for a missing base, an
    unknown message or log entry type, the wrong (or no) request/response half, or a term/index
    above 2**63-1.
    """
    if not pb.HasField("base"):
        raise BadRequest("RaftMessage has no base")
    base = pb.base
    mtype = _MSG_TYPES.get(base.type)
    if mtype is None:
        raise BadRequest(f"unknown message type {base.type}")
    term = base.term
    if term > MAX_TERM:
        raise BadRequest(f"term {term} out of range in {mtype.name}")
    half = pb.WhichOneof("req_resp")

    if mtype in _REQUEST_TYPES:
        if half != "rc_request":
            raise BadRequest(f"{mtype.name} must carry rc_request, got {half or 'neither half'}")
        req = pb.rc_request
        last_log_term = req.last_log_term
        last_log_index = req.last_log_index
        commit_index = req.commit_index
        if max(last_log_term, last_log_index, commit_index) > MAX_TERM:
            raise BadRequest(f"log term/index out of range in {mtype.name}")
        entries: list[LogEntry] = []
        append = entries.append
        for e in req.log_entries:
            ltype = _LOG_TYPES.get(e.type)
            if ltype is None:
                raise BadRequest(f"unknown log entry type {int(e.type)}")
            eterm = e.term
            if eterm > MAX_TERM:
                raise BadRequest(f"log entry term {eterm} out of range")
            append(LogEntry(eterm, ltype, e.buffer, e.timestamp))
        msg = Message(
            type=mtype,
            term=term,
            src=base.src,
            dest=base.dest,
            last_log_term=last_log_term,
            last_log_index=last_log_index,
            commit_index=commit_index,
            entries=tuple(entries),
            read_id=req.read_id,
        )
        return msg, ""

    if half != "rc_response":
        raise BadRequest(f"{mtype.name} must carry rc_response, got {half or 'neither half'}")
    resp = pb.rc_response
    next_index = resp.next_index
    if next_index > MAX_TERM:
        raise BadRequest(f"next_index {next_index} out of range in {mtype.name}")
    hint = resp.batch_size_hint
    if hint >= _I64_SIGN:
        hint -= _U64_SPAN
    msg = Message(
        type=mtype,
        term=term,
        src=base.src,
        dest=base.dest,
        next_index=next_index,
        accepted=resp.accepted,
        context=resp.context,
        result_code=ResultCode.from_wire(resp.result_code),
        batch_size_hint=hint,
        results=tuple(resp.results),
        read_id=resp.read_id,
    )
    return msg, resp.dest_addr


def group_msg_from_proto(pb: RaftGroupMsg) -> GroupEnvelope:
    """Decode and validate a ``RaftGroupMsg`` (see :func:`message_from_proto`)."""
    if not pb.HasField("msg"):
        raise BadRequest("RaftGroupMsg has no msg")
    msg, dest_addr = message_from_proto(pb.msg)
    return GroupEnvelope(
        group_id=pb.group_id,
        group_type=pb.group_type,
        intended_addr=pb.intended_addr,
        message=msg,
        dest_addr=dest_addr,
    )


def decode_group_msg(data: bytes) -> GroupEnvelope:
    """Parse serialized ``RaftGroupMsg`` bytes; anything malformed raises :class:`BadRequest`."""
    pb = RaftGroupMsg()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest(f"undecodable RaftGroupMsg: {exc}") from None
    return group_msg_from_proto(pb)
