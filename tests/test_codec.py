"""Round trips and hostile input for nuraft_mesg.transport.codec."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nuraft_mesg.errors import BadRequest, ResultCode
from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport import codec
from nuraft_mesg.transport._proto.messaging_service_pb2 import RaftGroupMsg
from nuraft_mesg.transport._proto.raft_types_pb2 import RaftMessage

MAX_TERM = (1 << 63) - 1
U64 = (1 << 64) - 1
I32 = st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1)
TERMS = st.one_of(
    st.integers(min_value=0, max_value=MAX_TERM),
    st.sampled_from([0, 1, MAX_TERM]),
)
REQUEST_TYPES = sorted(t for t in MsgType if t.is_request)
RESPONSE_TYPES = sorted(t for t in MsgType if not t.is_request)
BUFFERS = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.integers(min_value=64 * 1024, max_value=256 * 1024).map(lambda n: b"\xa5" * n),
)

entries_st = st.builds(
    LogEntry,
    term=TERMS,
    type=st.sampled_from(LogType),
    buffer=BUFFERS,
    timestamp=st.integers(min_value=0, max_value=U64),
)


@st.composite
def requests(draw: st.DrawFn, mtype: MsgType | None = None) -> Message:
    return Message(
        type=draw(st.sampled_from(REQUEST_TYPES)) if mtype is None else mtype,
        term=draw(TERMS),
        src=draw(I32),
        dest=draw(I32),
        last_log_term=draw(TERMS),
        last_log_index=draw(TERMS),
        commit_index=draw(TERMS),
        entries=tuple(draw(st.lists(entries_st, max_size=5))),
        read_id=draw(st.integers(min_value=0, max_value=U64)),
    )


@st.composite
def responses(draw: st.DrawFn, mtype: MsgType | None = None) -> Message:
    return Message(
        type=draw(st.sampled_from(RESPONSE_TYPES)) if mtype is None else mtype,
        term=draw(TERMS),
        src=draw(I32),
        dest=draw(I32),
        next_index=draw(TERMS),
        accepted=draw(st.booleans()),
        context=draw(BUFFERS),
        result_code=draw(st.sampled_from(ResultCode)),
        batch_size_hint=draw(
            st.one_of(
                st.integers(min_value=-(1 << 63), max_value=MAX_TERM),
                st.sampled_from([-(1 << 63), -1, 0, 1, MAX_TERM]),
            )
        ),
        read_id=draw(st.integers(min_value=0, max_value=U64)),
    )


messages = st.one_of(requests(), responses())
names = st.text(max_size=40)


def _roundtrip(msg: Message, dest_addr: str = "") -> tuple[Message, str]:
    pb = codec.message_to_proto(msg, dest_addr)
    wire = pb.SerializeToString()
    parsed = RaftMessage()
    parsed.ParseFromString(wire)
    return codec.message_from_proto(parsed)


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("mtype", REQUEST_TYPES, ids=lambda t: t.name)
@given(data=st.data())
def test_request_roundtrip_every_type(mtype: MsgType, data: st.DataObject) -> None:
    msg = data.draw(requests(mtype))
    pb = codec.message_to_proto(msg)
    assert pb.WhichOneof("req_resp") == "rc_request"
    assert _roundtrip(msg) == (msg, "")


@pytest.mark.parametrize("mtype", RESPONSE_TYPES, ids=lambda t: t.name)
@given(data=st.data(), dest_addr=names)
def test_response_roundtrip_every_type(mtype: MsgType, data: st.DataObject, dest_addr: str) -> None:
    msg = data.draw(responses(mtype))
    pb = codec.message_to_proto(msg, dest_addr)
    assert pb.WhichOneof("req_resp") == "rc_response"
    assert _roundtrip(msg, dest_addr) == (msg, dest_addr)


@pytest.mark.parametrize("code", list(ResultCode), ids=lambda c: c.name)
def test_every_result_code_travels_negated(code: ResultCode) -> None:
    msg = Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2, result_code=code)
    pb = codec.message_to_proto(msg)
    assert pb.rc_response.result_code == -int(code) == code.wire
    assert _roundtrip(msg)[0].result_code is code


@pytest.mark.parametrize(
    ("hint", "wire"),
    [(0, 0), (1, 1), (-1, U64), (-(1 << 63), 1 << 63), (MAX_TERM, MAX_TERM), (-5, U64 - 4)],
)
def test_batch_size_hint_is_twos_complement(hint: int, wire: int) -> None:
    msg = Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2, batch_size_hint=hint)
    assert codec.message_to_proto(msg).rc_response.batch_size_hint == wire
    assert _roundtrip(msg)[0].batch_size_hint == hint


def test_empty_context_is_not_sent_and_empty_halves_are_present() -> None:
    resp = codec.message_to_proto(Message(MsgType.PING_RESPONSE, 0, 0, 0))
    assert resp.WhichOneof("req_resp") == "rc_response"
    assert resp.rc_response.ListFields() == [] and resp.rc_response.ByteSize() == 0
    with_ctx = codec.message_to_proto(Message(MsgType.PING_RESPONSE, 0, 0, 0, context=b"c"))
    assert [f.name for f, _ in with_ctx.rc_response.ListFields()] == ["context"]
    req = codec.message_to_proto(Message(MsgType.PING_REQUEST, 0, 0, 0))
    assert req.WhichOneof("req_resp") == "rc_request"
    assert req.HasField("base")
    # An all-default request still serializes its (empty) half, so the type is decidable.
    assert _roundtrip(Message(MsgType.PING_REQUEST, 0, 0, 0))[0].type is MsgType.PING_REQUEST


@given(msg=messages, group_id=names, group_type=names, intended=names, dest_addr=names)
def test_group_msg_roundtrip(
    msg: Message, group_id: str, group_type: str, intended: str, dest_addr: str
) -> None:
    if msg.is_request:
        dest_addr = ""
    data = codec.encode_group_msg(group_id, group_type, intended, msg, dest_addr)
    env = codec.decode_group_msg(data)
    assert env == codec.GroupEnvelope(group_id, group_type, intended, msg, dest_addr)
    pb = codec.group_msg_to_proto(group_id, group_type, intended, msg, dest_addr)
    assert pb.SerializeToString() == data
    assert codec.group_msg_from_proto(pb) == env


def test_group_msg_fields_land_in_the_right_numbers() -> None:
    msg = Message(MsgType.JOIN_CLUSTER_REQUEST, 3, 1, 2)
    pb = codec.group_msg_to_proto("gid", "gtype", "peer", msg)
    assert (pb.group_id, pb.group_type, pb.intended_addr) == ("gid", "gtype", "peer")
    assert pb.msg.base.type == 12
    assert pb.msg.base.dest == 2


# -- encode-side validation -------------------------------------------------------------------
@pytest.mark.parametrize(
    "msg",
    [
        Message(MsgType.APPEND_ENTRIES_REQUEST, -1, 1, 2),
        Message(MsgType.APPEND_ENTRIES_REQUEST, MAX_TERM + 1, 1, 2),
        Message(MsgType.APPEND_ENTRIES_REQUEST, 1, 1 << 31, 2),
        Message(MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2, commit_index=MAX_TERM + 1),
        Message(MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2, last_log_index=-1),
        Message(MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2, entries=(LogEntry(MAX_TERM + 1),)),
        Message(MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2, entries=(LogEntry(-1),)),
        Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2, batch_size_hint=1 << 63),
        Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2, batch_size_hint=-(1 << 63) - 1),
        Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2, next_index=MAX_TERM + 1),
        Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 1, 2, next_index=-1),
    ],
)
def test_unencodable_messages_raise_bad_request(msg: Message) -> None:
    with pytest.raises(BadRequest):
        codec.message_to_proto(msg)


def test_dest_addr_only_on_responses() -> None:
    with pytest.raises(BadRequest, match="dest_addr"):
        codec.message_to_proto(Message(MsgType.CLIENT_REQUEST, 1, 0, 1), "peer")


# -- hostile input ----------------------------------------------------------------------------
def _request_pb() -> RaftMessage:
    return codec.message_to_proto(
        Message(MsgType.APPEND_ENTRIES_REQUEST, 2, 1, 2, entries=(LogEntry(1, buffer=b"x"),))
    )


def _response_pb() -> RaftMessage:
    return codec.message_to_proto(Message(MsgType.APPEND_ENTRIES_RESPONSE, 2, 2, 1))


def test_missing_base() -> None:
    pb = RaftMessage()
    pb.rc_request.commit_index = 1
    with pytest.raises(BadRequest, match="no base"):
        codec.message_from_proto(pb)


@pytest.mark.parametrize("number", [0, 30, 31, 1000, (1 << 32) - 1])
def test_unknown_message_type(number: int) -> None:
    pb = _request_pb()
    pb.base.type = number
    with pytest.raises(BadRequest, match=f"unknown message type {number}"):
        codec.message_from_proto(pb)


def test_request_type_with_response_half() -> None:
    pb = _response_pb()
    pb.base.type = MsgType.APPEND_ENTRIES_REQUEST
    with pytest.raises(BadRequest, match="must carry rc_request"):
        codec.message_from_proto(pb)


def test_response_type_with_request_half() -> None:
    pb = _request_pb()
    pb.base.type = MsgType.APPEND_ENTRIES_RESPONSE
    with pytest.raises(BadRequest, match="must carry rc_response"):
        codec.message_from_proto(pb)


@pytest.mark.parametrize("mtype", [MsgType.PING_REQUEST, MsgType.PING_RESPONSE])
def test_neither_half(mtype: MsgType) -> None:
    pb = RaftMessage()
    pb.base.type = mtype
    with pytest.raises(BadRequest, match="neither half"):
        codec.message_from_proto(pb)


def test_both_halves_on_the_wire_keep_the_last_one() -> None:
    # A oneof cannot hold both; on the wire the last one wins, and must still match the type.
    req = _request_pb().SerializeToString()
    resp_half = RaftMessage()
    resp_half.rc_response.accepted = True
    pb = RaftMessage()
    pb.ParseFromString(req + resp_half.SerializeToString())
    assert pb.WhichOneof("req_resp") == "rc_response"
    with pytest.raises(BadRequest, match="must carry rc_request"):
        codec.message_from_proto(pb)


@pytest.mark.parametrize(
    "field", ["base.term", "last_log_term", "last_log_index", "commit_index", "entry.term"]
)
def test_terms_and_indices_above_int63_are_rejected(field: str) -> None:
    pb = _request_pb()
    big = MAX_TERM + 1
    if field == "base.term":
        pb.base.term = big
    elif field == "entry.term":
        pb.rc_request.log_entries[0].term = big
    else:
        setattr(pb.rc_request, field, big)
    with pytest.raises(BadRequest, match="out of range"):
        codec.message_from_proto(pb)


def test_next_index_above_int63_is_rejected() -> None:
    pb = _response_pb()
    pb.rc_response.next_index = U64
    with pytest.raises(BadRequest, match="out of range"):
        codec.message_from_proto(pb)


@pytest.mark.parametrize("number", [6, 7, 998, 1000, -1])
def test_unknown_log_entry_type(number: int) -> None:
    pb = _request_pb()
    pb.rc_request.log_entries[0].type = number  # type: ignore[assignment]
    data = pb.SerializeToString()
    parsed = RaftMessage()
    parsed.ParseFromString(data)
    with pytest.raises(BadRequest, match=f"unknown log entry type {number}"):
        codec.message_from_proto(parsed)


@pytest.mark.parametrize("wire", [13, 99, 10001, 32767, 40000, -3, -(1 << 31)])
def test_unknown_result_code_decodes_as_failed(wire: int) -> None:
    pb = _response_pb()
    pb.rc_response.result_code = wire  # type: ignore[assignment]
    parsed = RaftMessage()
    parsed.ParseFromString(pb.SerializeToString())
    assert codec.message_from_proto(parsed)[0].result_code is ResultCode.FAILED


def test_group_msg_without_msg() -> None:
    with pytest.raises(BadRequest, match="no msg"):
        codec.group_msg_from_proto(RaftGroupMsg(group_id="g"))
    with pytest.raises(BadRequest, match="no msg"):
        codec.decode_group_msg(b"")


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",  # truncated tag
        b"\x12\x05\x0a\x01",  # msg longer than the buffer
        b"\x0a\x02\xc3\x28",  # group_id that is not UTF-8
        b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # oversized length varint
        b"\x0f",  # end-group tag without start
        b"\x13" * 200,  # deeply nested groups
    ],
)
def test_malformed_bytes_raise_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest):
        codec.decode_group_msg(data)


def test_deep_nesting_raises_bad_request() -> None:
    # Unknown length-delimited fields nested far past protobuf's recursion limit.
    inner = b""
    for _ in range(200):
        inner = b"\x2a" + _varint(len(inner)) + inner  # field 5 (unknown), wire type 2
    try:
        env = codec.decode_group_msg(inner + b"\x12\x00")
    except BadRequest:
        return
    pytest.fail(f"decoded {env!r}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@given(data=st.binary(max_size=256))
def test_random_bytes_decode_or_bad_request(data: bytes) -> None:
    try:
        env = codec.decode_group_msg(data)
    except BadRequest:
        return
    assert isinstance(env, codec.GroupEnvelope)
    assert isinstance(env.message, Message)


@given(msg=messages, flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=4))
def test_corrupted_messages_decode_or_bad_request(
    msg: Message, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(codec.encode_group_msg("g", "t", "peer", msg))
    assume(data)
    for pos, value in flips:
        data[pos % len(data)] = value
    try:
        env = codec.decode_group_msg(bytes(data))
    except BadRequest:
        return
    assert isinstance(env.message, Message)


@given(data=st.binary(min_size=1, max_size=64), cut=st.integers(0))
def test_truncated_messages_decode_or_bad_request(data: bytes, cut: int) -> None:
    msg = Message(MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2, entries=(LogEntry(1, buffer=data),))
    wire = codec.encode_group_msg("g", "", "peer", msg)
    truncated = wire[: cut % len(wire)]
    with contextlib.suppress(BadRequest):
        codec.decode_group_msg(truncated)
