"""Interop with an independent gRPC implementation: a client built with the official
``grpcio`` package from ``proto/`` (tests/security/grpcio_client.py, in a subprocess that
imports nothing from nuraft_mesg) calls RaftStep, the data service and Admin/Status on live
nodes and gets the right answers and error statuses - over plain TCP, and over mutual TLS
with ALPN h2 and a token."""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from nuraft_mesg.manager import ManagerConfig
from nuraft_mesg.raft.types import LogType, MsgType
from nuraft_mesg.transport.security import StaticTokenClient, StaticTokenVerifier

from . import Certs, LiveCluster, LiveNode, count_input

pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("grpcio_client.py")
KIB = 1024


def raft_msg(group_id: str, node: LiveNode, mtype: MsgType, *, term: int = 0,
             entries: list[dict[str, Any]] | None = None, intended: str | None = None,
             dest: int | None = None) -> dict[str, Any]:
    return {
        "group_id": group_id,
        "intended_addr": intended or node.uuid,
        "msg": {
            "base": {"term": str(term), "type": int(mtype), "src": 4242,
                     "dest": node.server_id if dest is None else dest},
            "rc_request": {"log_entries": entries or []},
        },
    }


def app_entry(data: bytes) -> dict[str, Any]:
    return {"term": "0", "type": LogType.APP.name, "buffer": base64.b64encode(data).decode()}


async def run_grpcio(tmp_path: Path, target: str, calls: list[dict[str, Any]],
                     tls: dict[str, str] | None = None) -> list[dict[str, Any]]:
    plan = {"target": target, "proto_dir": str(ROOT / "proto"), "out_dir": str(tmp_path / "gen"),
            "tls": tls, "calls": calls}
    plan_file = tmp_path / f"plan-{uuid.uuid4().hex}.json"
    plan_file.write_text(json.dumps(plan))
    result = await trio.run_process([sys.executable, str(CLIENT), str(plan_file)],
                                    capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    out: list[dict[str, Any]] = json.loads(result.stdout)
    count_input("grpcio", len(out))
    return out


async def echo(request: bytes) -> bytes:
    return b"echo:" + request


async def slow(request: bytes) -> bytes:
    await trio.sleep(5)
    return b""


async def test_grpcio_client_against_live_nodes(tmp_path: Path) -> None:
    def configure(i: int, config: ManagerConfig) -> ManagerConfig:
        return dataclasses.replace(config, max_receive_message_size=64 * KIB)

    async with LiveCluster.open(3, configure) as cluster:
        gid = await cluster.create_group()
        await cluster.commit(gid, b"set a 1")
        leader = cluster.leader(gid)
        assert leader is not None
        follower = next(n for n in cluster.nodes if n is not leader)
        for n in cluster.nodes:
            assert n.mgr.bind_data_service_request("echo", gid, echo)
            assert n.mgr.bind_data_service_request("slow", gid, slow)
        core = follower.cores[gid]
        target = f"127.0.0.1:{follower.mgr.port}"
        calls: list[dict[str, Any]] = [
            # 0: a ping from the past: answered by the group, refused with TERM_MISMATCH
            {"method": "RaftStep", "request": raft_msg(gid, follower, MsgType.PING_REQUEST)},
            # 1: an external write sent to a follower: NOT_LEADER, redirect to the leader
            {"method": "RaftStep", "request": raft_msg(gid, follower, MsgType.CLIENT_REQUEST,
                                                       entries=[app_entry(b"set g 1")])},
            # 2: unknown group
            {"method": "RaftStep", "request": raft_msg(str(uuid.uuid4()), follower,
                                                       MsgType.APPEND_ENTRIES_REQUEST)},
            # 3: meant for another node
            {"method": "RaftStep", "request": raft_msg(gid, follower, MsgType.PING_REQUEST,
                                                       intended=leader.uuid)},
            # 4: garbage body
            {"method": "Raw", "path": "/nuraft_mesg.Messaging/RaftStep", "raw": "ffff01"},
            # 5: unknown method
            {"method": "Raw", "path": "/nuraft_mesg.Messaging/Nope", "raw": ""},
            # 6: the data service
            {"method": "DataCall", "request": {"group_id": gid, "request_name": "echo",
                                               "intended_addr": follower.uuid,
                                               "payload": base64.b64encode(b"hi").decode()}},
            # 7: a name nobody bound
            {"method": "DataCall", "request": {"group_id": gid, "request_name": "nope",
                                               "intended_addr": follower.uuid}},
            # 8: the handler outlives the caller's deadline
            {"method": "DataCall", "timeout": 0.5,
             "request": {"group_id": gid, "request_name": "slow",
                         "intended_addr": follower.uuid}},
            # 9: larger than the node accepts
            {"method": "DataCall", "request": {
                "group_id": gid, "request_name": "echo", "intended_addr": follower.uuid,
                "payload": base64.b64encode(b"x" * (100 * KIB)).decode()}},
            # 10: compressed by grpcio (gzip), inflated by the node
            {"method": "DataCall", "compression": "gzip", "request": {
                "group_id": gid, "request_name": "echo", "intended_addr": follower.uuid,
                "payload": base64.b64encode(b"z" * (32 * KIB)).decode()}},
            # 11: status
            {"method": "Status", "request": {"group_ids": [gid]}},
        ]
        r = await run_grpcio(tmp_path, target, calls)
        assert [c["code"] for c in r] == [
            "OK", "OK", "NOT_FOUND", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "UNIMPLEMENTED",
            "OK", "UNIMPLEMENTED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "OK", "OK",
        ], r
        ping = r[0]["response"]
        assert ping["group_id"] == gid and "intended_addr" not in ping
        assert ping["msg"]["base"]["type"] == MsgType.PING_RESPONSE
        assert ping["msg"]["base"]["src"] == follower.server_id
        assert int(ping["msg"]["base"]["term"]) == core.term
        assert ping["msg"]["rc_response"]["result_code"] == "TERM_MISMATCH"
        redirect = r[1]["response"]["msg"]["rc_response"]
        assert redirect["result_code"] == "NOT_LEADER"
        assert redirect["dest_addr"] == leader.uuid
        assert "Missing RAFT group" in r[2]["details"]
        assert "intended addr" in r[3]["details"]
        assert base64.b64decode(r[6]["response"]["payload"]) == b"echo:hi"
        assert "not registered" in r[7]["details"]
        assert "maximum receive size" in r[9]["details"]
        assert base64.b64decode(r[10]["response"]["payload"]) == b"echo:" + b"z" * (32 * KIB)
        status = r[11]["response"]
        assert status["server_uuid"] == follower.uuid
        assert [g["group_id"] for g in status["groups"]] == [gid]

        # An external write through the leader: accepted once applied, with the state
        # machine's result, and replicated everywhere.
        leader_target = f"127.0.0.1:{leader.mgr.port}"
        (write,) = await run_grpcio(tmp_path, leader_target, [
            {"method": "RaftStep", "request": raft_msg(gid, leader, MsgType.CLIENT_REQUEST,
                                                       entries=[app_entry(b"set g 1")])}])
        assert write["code"] == "OK", write
        reply = write["response"]["msg"]
        assert reply["rc_response"].get("accepted") is True
        assert base64.b64decode(reply["rc_response"]["context"]) == b"OK"
        index = int(reply["rc_response"]["next_index"]) - 1
        assert await cluster.wait_until(lambda: all(
            n.mgr.group(gid).statistics().applied_index >= index for n in cluster.nodes),
            timeout=10, poll=0.05)
        await cluster.commit(gid, b"set after-grpcio 1")
        cluster.check()


async def test_grpcio_over_mutual_tls_with_token(tmp_path: Path, certs: Certs) -> None:
    def configure(i: int, config: ManagerConfig) -> ManagerConfig:
        return dataclasses.replace(
            config, ssl_cert=certs.node_cert, ssl_key=certs.node_key, ssl_ca=certs.ca,
            ssl_mutual=True, token_client=StaticTokenClient("t0k"),
            token_verifier=StaticTokenVerifier("t0k"))

    async with LiveCluster.open(2, configure) as cluster:
        gid = await cluster.create_group()
        await cluster.commit(gid, b"set a 1")
        node = cluster.nodes[1]
        target = f"localhost:{node.mgr.port}"
        ping = {"method": "RaftStep", "request": raft_msg(gid, node, MsgType.PING_REQUEST)}
        token = [["authorization", "Bearer t0k"]]
        full = {"root": certs.ca, "cert": certs.client_cert, "key": certs.client_key}
        r = await run_grpcio(tmp_path, target, [
            {**ping, "metadata": token},
            ping,
            {**ping, "metadata": [["authorization", "Bearer nope"]]},
            {"method": "Status", "request": {}, "metadata": token},
        ], tls=full)
        assert [c["code"] for c in r] == ["OK", "UNAUTHENTICATED", "UNAUTHENTICATED", "OK"], r
        assert r[0]["response"]["msg"]["base"]["type"] == MsgType.PING_RESPONSE
        # no client certificate: the handshake fails, no call gets through
        r = await run_grpcio(tmp_path, target, [{**ping, "metadata": token, "timeout": 3}],
                             tls={"root": certs.ca})
        assert r[0]["code"] == "UNAVAILABLE", r
        # plaintext grpcio against the TLS port
        r = await run_grpcio(tmp_path, target, [{**ping, "metadata": token, "timeout": 3}])
        assert r[0]["code"] == "UNAVAILABLE", r
        await cluster.commit(gid, b"set after 1")
        cluster.check()
