"""Wire schema of the data service and of Admin/Status; their routing on the RaftStep
server; the status report and its table."""

from __future__ import annotations

import uuid

import pytest
import trio
from google.protobuf.descriptor import FieldDescriptor as F

from nuraft_mesg.cli.status_format import format_status, short_names
from nuraft_mesg.transport._proto import admin_pb2, data_service_pb2
from nuraft_mesg.transport.base import DataRequest, Status, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc import GrpcTransport
from nuraft_mesg.transport.status import (
    GroupStatus,
    MemberStatus,
    NodeStatus,
    decode_status,
    encode_status,
)


def _fields(desc: object) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in desc.fields}  # type: ignore[attr-defined]


def test_data_service_schema() -> None:
    file = data_service_pb2.DESCRIPTOR
    assert file.package == "nuraft_mesg" and file.name == "data_service.proto"
    service = file.services_by_name["DataService"]
    (call,) = service.methods
    assert call.full_name == "nuraft_mesg.DataService.Call"
    assert call.input_type.full_name == "nuraft_mesg.DataServiceRequest"
    assert call.output_type.full_name == "nuraft_mesg.DataServiceResponse"
    assert not call.client_streaming and not call.server_streaming
    assert _fields(file.message_types_by_name["DataServiceRequest"]) == {
        "group_id": (1, F.TYPE_STRING),
        "request_name": (2, F.TYPE_STRING),
        "intended_addr": (3, F.TYPE_STRING),
        "payload": (4, F.TYPE_BYTES),
    }
    assert _fields(file.message_types_by_name["DataServiceResponse"]) == {
        "payload": (1, F.TYPE_BYTES),
    }


def test_admin_schema() -> None:
    file = admin_pb2.DESCRIPTOR
    assert file.package == "nuraft_mesg"
    (status,) = file.services_by_name["Admin"].methods
    assert status.full_name == "nuraft_mesg.Admin.Status"
    assert _fields(file.message_types_by_name["StatusResponse"]) == {
        "server_uuid": (1, F.TYPE_STRING),
        "server_id": (2, F.TYPE_INT32),
        "groups": (3, F.TYPE_MESSAGE),
        "data_service": (4, F.TYPE_BOOL),
    }
    assert list(_fields(file.message_types_by_name["GroupStatus"])) == [
        "group_id", "group_type", "leader_id", "is_leader", "term", "commit_index",
        "last_log_index", "applied_index", "members",
    ]


class _RaftOnlyHandler:
    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        raise AssertionError("not called")


async def test_server_without_data_or_status_handler_answers_unimplemented() -> None:
    me, peer = str(uuid.uuid4()), str(uuid.uuid4())
    directory: dict[str, str] = {}
    server = GrpcTransport(server_uuid=me, host="127.0.0.1", lookup_peer=lambda p: "")
    client = GrpcTransport(server_uuid=peer, host="127.0.0.1",
                           lookup_peer=lambda p: directory.get(p, ""))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, client:
            port = await nursery.start(server.serve, _RaftOnlyHandler())
            directory[me] = f"127.0.0.1:{port}"
            gid = str(uuid.uuid4())
            with pytest.raises(TransportError) as info:
                await client.data_call(me, DataRequest(gid, "x", b"p"), timeout=5)
            assert info.value.status == Status.UNIMPLEMENTED
            with pytest.raises(TransportError) as info:
                await client.status_call(me, timeout=5)
            assert info.value.status == Status.UNIMPLEMENTED
            nursery.cancel_scope.cancel()


async def test_data_call_checks_intended_addr_and_group_id() -> None:
    me, other = str(uuid.uuid4()), str(uuid.uuid4())
    directory: dict[str, str] = {}
    seen: list[DataRequest] = []

    class Handler(_RaftOnlyHandler):
        async def data_request(self, request: DataRequest) -> bytes:
            seen.append(request)
            return request.payload[::-1]

    server = GrpcTransport(server_uuid=me, host="127.0.0.1", lookup_peer=lambda p: "")
    client = GrpcTransport(server_uuid=other, host="127.0.0.1",
                           lookup_peer=lambda p: directory.get(p, ""))
    gid = str(uuid.uuid4())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, client:
            port = await nursery.start(server.serve, Handler())
            directory[me] = f"127.0.0.1:{port}"
            assert await client.data_call(me, DataRequest(gid, "n", b"abc"), timeout=5) == b"cba"
            assert seen == [DataRequest(gid, "n", b"abc", me)]
            for bad in (DataRequest(gid, "n", b"", intended_addr=other),
                        DataRequest("not-a-group", "n", b"")):
                with pytest.raises(TransportError) as info:
                    await client.data_call(me, bad, timeout=5)
                assert info.value.status == Status.INVALID_ARGUMENT
            assert len(seen) == 1
            nursery.cancel_scope.cancel()


def _sample() -> NodeStatus:
    a, b, c = ("aaaaaaaa-0000-4000-8000-000000000001", "aaaaaaaa-1111-4000-8000-000000000002",
               "cccccccc-0000-4000-8000-000000000003")
    leader = GroupStatus(
        group_id="12345678-0000-4000-8000-000000000000", group_type="kv", leader_id=a,
        is_leader=True, term=3, commit_index=10, last_log_index=12, applied_index=10,
        members=(
            MemberStatus(a, 1, 100, False, True, 12, 0),
            MemberStatus(b, 2, 1, True, True, 9, 1500),
            MemberStatus(c, -1, 1, False, True, 2, 10, is_new_joiner=True),
        ),
    )
    follower = GroupStatus(
        group_id="87654321-0000-4000-8000-000000000000", group_type="kv", leader_id=c,
        is_leader=False, term=1, commit_index=4, last_log_index=4, applied_index=4,
        members=(MemberStatus(a, 1, has_progress=True, last_log_idx=4),
                 MemberStatus(c, 3)),
    )
    return NodeStatus(a, 1, (leader, follower), True)


def test_status_round_trip_and_table() -> None:
    status = _sample()
    assert decode_status(encode_status(status)) == status
    names = short_names([m.peer_id for g in status.groups for m in g.members])
    assert len(set(names.values())) == 3
    # One common prefix length, the shortest that tells them apart (at least 8).
    assert set(names.values()) == {"aaaaaaaa-0", "aaaaaaaa-1", "cccccccc-0"}
    assert short_names(["cccccccc-0000-4000-8000-000000000003"]) == {
        "cccccccc-0000-4000-8000-000000000003": "cccccccc"}
    table = format_status(status)
    lines = table.splitlines()
    assert lines[0].startswith("node aaaaaaaa-0 (") and "2 group(s)" in lines[0]
    assert lines[1].split() == ["group", "leader", "term", "commit", "applied", "members",
                                "lag"]
    row = lines[3]
    assert row.startswith("12345678  aaaaaaaa-0 (this node)  3")
    assert "aaaaaaaa-1(L)" in row and "cccccccc-0*" in row
    assert "aaaaaaaa-0:0 aaaaaaaa-1:3 cccccccc-0:10" in row
    follower_row = lines[4]
    assert follower_row.split()[:2] == ["87654321", "cccccccc-0"]
    assert follower_row.endswith("aaaaaaaa-0:0")  # a follower knows only its own lag
    empty = format_status(NodeStatus(str(uuid.uuid4()), 5)).splitlines()
    assert len(empty) == 3 and "0 group(s)" in empty[0]
