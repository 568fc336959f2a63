"""The committed generated code matches the schema, and the schema matches nuraft_mesg's."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from nuraft_mesg.transport._proto import messaging_service_pb2, raft_types_pb2
from tools.gen_proto import OUT_DIR, generate

REGEN = "python3 tools/dev.py proto"


def _files(directory: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.endswith((".pyc", ".tmp"))
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = _files(tmp_path)
    committed = _files(OUT_DIR)
    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    assert not missing, f"generated files missing from {OUT_DIR}: {missing}; run `{REGEN}`"
    assert not extra, f"stale files in {OUT_DIR} (not generated): {extra}; run `{REGEN}`"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"generated code is out of date: {stale}; run `{REGEN}`"


def test_generate_is_idempotent_and_removes_stale_files(tmp_path: Path) -> None:
    generate(tmp_path)
    first = _files(tmp_path)
    (tmp_path / "obsolete_pb2.py").write_text("# stale\n")
    generate(tmp_path)
    assert _files(tmp_path) == first


def _fields(desc: Descriptor) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in desc.fields}


def _enum(desc: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in desc.values}


F = FieldDescriptor


def _type_of(desc: Descriptor, field: str) -> str:
    """Full name of the message or enum type of ``desc.field``."""
    fd = desc.fields_by_name[field]
    target = fd.message_type or fd.enum_type
    assert target is not None, f"{desc.name}.{field} is a scalar"
    return target.full_name


def test_file_level_schema() -> None:
    for module, name in (
        (raft_types_pb2, "raft_types.proto"),
        (messaging_service_pb2, "messaging_service.proto"),
    ):
        assert module.DESCRIPTOR.name == name
        assert module.DESCRIPTOR.package == "nuraft_mesg"
    assert [d.name for d in messaging_service_pb2.DESCRIPTOR.dependencies] == ["raft_types.proto"]


def test_enums_match_nuraft_mesg() -> None:
    assert _enum(raft_types_pb2.DESCRIPTOR.enum_types_by_name["LogType"]) == {
        "UNKNOWN": 0,
        "APP": 1,
        "CONFIG": 2,
        "CLUSTER": 3,
        "PACK": 4,
        "SNAPSYNC": 5,
        "CUSTOM": 999,
    }
    assert _enum(raft_types_pb2.DESCRIPTOR.enum_types_by_name["ResultCode"]) == {
        "OK": 0,
        "CANCELLED": 1,
        "TIMEOUT": 2,
        "NOT_LEADER": 3,
        "BAD_REQUEST": 4,
        "SERVER_ALREADY_EXISTS": 5,
        "CONFIG_CHANGING": 6,
        "SERVER_IS_JOINING": 7,
        "SERVER_NOT_FOUND": 8,
        "CANNOT_REMOVE_LEADER": 9,
        "SERVER_IS_LEAVING": 10,
        "TERM_MISMATCH": 11,
        "RESULT_NOT_EXIST_YET": 10000,
        "FAILED": 32768,
    }


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "LogEntry",
            {
                "term": (1, F.TYPE_UINT64),
                "type": (2, F.TYPE_ENUM),
                "buffer": (3, F.TYPE_BYTES),
                "timestamp": (4, F.TYPE_UINT64),
            },
        ),
        (
            "RCMsgBase",
            {
                "term": (1, F.TYPE_UINT64),
                "type": (2, F.TYPE_UINT32),
                "src": (3, F.TYPE_INT32),
                "dest": (4, F.TYPE_INT32),
            },
        ),
        (
            "RCRequest",
            {
                "last_log_term": (1, F.TYPE_UINT64),
                "last_log_index": (2, F.TYPE_UINT64),
                "commit_index": (3, F.TYPE_UINT64),
                "log_entries": (4, F.TYPE_MESSAGE),
                "read_id": (16, F.TYPE_UINT64),  # extension: heartbeat round / read request
            },
        ),
        (
            "RCResponse",
            {
                "next_index": (1, F.TYPE_UINT64),
                "accepted": (2, F.TYPE_BOOL),
                "context": (3, F.TYPE_BYTES),
                "dest_addr": (4, F.TYPE_STRING),
                "result_code": (5, F.TYPE_ENUM),
                "batch_size_hint": (6, F.TYPE_UINT64),
                "results": (7, F.TYPE_BYTES),  # extension: per-entry client_request results
                "read_id": (16, F.TYPE_UINT64),  # extension: the request's read_id, echoed
            },
        ),
        (
            "RaftMessage",
            {
                "base": (1, F.TYPE_MESSAGE),
                "rc_request": (2, F.TYPE_MESSAGE),
                "rc_response": (3, F.TYPE_MESSAGE),
            },
        ),
    ],
)
def test_raft_types_fields_match_nuraft_mesg(
    message: str, expected: dict[str, tuple[int, int]]
) -> None:
    desc = raft_types_pb2.DESCRIPTOR.message_types_by_name[message]
    assert _fields(desc) == expected


def test_field_types_reference_the_right_messages() -> None:
    types = raft_types_pb2.DESCRIPTOR.message_types_by_name
    assert _type_of(types["LogEntry"], "type") == "nuraft_mesg.LogType"
    resp = types["RCResponse"]
    assert _type_of(resp, "result_code") == "nuraft_mesg.ResultCode"
    assert resp.fields_by_name["batch_size_hint"].number == 6
    log_entries = types["RCRequest"].fields_by_name["log_entries"]
    assert _type_of(types["RCRequest"], "log_entries") == "nuraft_mesg.LogEntry"
    assert log_entries.is_repeated
    raft = types["RaftMessage"]
    assert _type_of(raft, "base") == "nuraft_mesg.RCMsgBase"
    oneof = raft.oneofs_by_name["req_resp"]
    assert [f.name for f in oneof.fields] == ["rc_request", "rc_response"]
    assert _type_of(raft, "rc_request") == "nuraft_mesg.RCRequest"
    assert _type_of(raft, "rc_response") == "nuraft_mesg.RCResponse"


def test_raft_group_msg_matches_nuraft_mesg() -> None:
    desc = messaging_service_pb2.DESCRIPTOR.message_types_by_name["RaftGroupMsg"]
    assert _fields(desc) == {
        "group_id": (1, F.TYPE_STRING),
        "msg": (2, F.TYPE_MESSAGE),
        "intended_addr": (3, F.TYPE_STRING),
        "group_type": (4, F.TYPE_STRING),
    }
    assert _type_of(desc, "msg") == "nuraft_mesg.RaftMessage"


def test_messaging_service_matches_nuraft_mesg() -> None:
    services = messaging_service_pb2.DESCRIPTOR.services_by_name
    assert list(services) == ["Messaging"]
    service = services["Messaging"]
    assert service.full_name == "nuraft_mesg.Messaging"
    # RaftStep is nuraft_mesg's; RaftStream is our extension (C++ nodes answer UNIMPLEMENTED).
    assert [m.name for m in service.methods] == ["RaftStep", "RaftStream"]
    step = service.methods_by_name["RaftStep"]
    assert step.input_type.full_name == "nuraft_mesg.RaftGroupMsg"
    assert step.output_type.full_name == "nuraft_mesg.RaftGroupMsg"
    assert not step.client_streaming
    assert not step.server_streaming
    stream = service.methods_by_name["RaftStream"]
    assert stream.input_type.full_name == "nuraft_mesg.RaftBatch"
    assert stream.output_type.full_name == "nuraft_mesg.RaftBatch"
    assert stream.client_streaming and stream.server_streaming


def test_raft_stream_extension_messages() -> None:
    types = messaging_service_pb2.DESCRIPTOR.message_types_by_name
    assert _fields(types["RaftBatchItem"]) == {
        "seq": (1, F.TYPE_UINT64),
        "msg": (2, F.TYPE_MESSAGE),
        "status": (3, F.TYPE_UINT32),
        "error": (4, F.TYPE_STRING),
        "quiesce": (5, F.TYPE_BOOL),
    }
    assert _type_of(types["RaftBatchItem"], "msg") == "nuraft_mesg.RaftGroupMsg"
    assert _fields(types["RaftBatch"]) == {
        "sender": (1, F.TYPE_STRING),
        "items": (2, F.TYPE_MESSAGE),
    }
    assert _type_of(types["RaftBatch"], "items") == "nuraft_mesg.RaftBatchItem"
    assert types["RaftBatch"].fields_by_name["items"].is_repeated


def test_purerpc_stub_uses_the_raft_step_path() -> None:
    from nuraft_mesg.transport._proto import messaging_service_grpc

    service = messaging_service_grpc.MessagingServicer().service
    assert service.name == "nuraft_mesg.Messaging"
    assert list(service.methods) == ["RaftStep", "RaftStream"]
    signature = service.methods["RaftStep"].signature
    assert signature.request_type is messaging_service_pb2.RaftGroupMsg
    assert signature.response_type is messaging_service_pb2.RaftGroupMsg
