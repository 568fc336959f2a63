"""Token authentication: a token client's header on every outbound call, a token verifier on
every inbound one (RaftStep, the data service and Admin/Status alike).  A refused call is
answered UNAUTHENTICATED (or the verifier's status) before its body is read, and nothing
reaches a group or a data-service handler."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

import pytest
import trio
import trio.lowlevel

from nuraft_mesg.client import ExternalClient
from nuraft_mesg.data_service import LEADER
from nuraft_mesg.errors import BadRequest
from nuraft_mesg.manager import ManagerConfig
from nuraft_mesg.transport.base import DataRequest, Status, TransportError
from nuraft_mesg.transport.grpc import GrpcTransport
from nuraft_mesg.transport.security import (
    Metadata,
    StaticTokenClient,
    StaticTokenVerifier,
    TokenClient,
    fetch_token,
    run_verifier,
)

from . import DATA_PATH, STATUS_PATH, LiveCluster, raw_call
from .test_tls import probe, received

SECRET = "s3cret-cluster-token"


def with_tokens(verifier: object = None) -> Callable[[int, ManagerConfig], ManagerConfig]:
    def configure(i: int, config: ManagerConfig) -> ManagerConfig:
        return dataclasses.replace(
            config,
            token_client=StaticTokenClient(SECRET),
            token_verifier=verifier or StaticTokenVerifier(SECRET),  # type: ignore[arg-type]
        )

    return configure


class _Headers:
    """A token client sending arbitrary headers (for the attacks)."""

    def __init__(self, key: str, value: str) -> None:
        self.auth_header_key = key
        self.value = value

    def get_token(self) -> str:
        return self.value


class _AsyncToken:
    auth_header_key = "x-cluster-token"

    def __init__(self) -> None:
        self.calls = 0

    async def get_token(self) -> str:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        return "async-token"


class _AsyncVerifier:
    def __init__(self) -> None:
        self.seen: list[Metadata] = []

    async def verify(self, metadata: Metadata) -> Status | tuple[Status, str]:
        await trio.lowlevel.checkpoint()
        self.seen.append(dict(metadata))
        if metadata.get("x-cluster-token") == "async-token":
            return Status.OK
        return Status.PERMISSION_DENIED, "not one of us"


ATTACKERS: dict[str, TokenClient | None] = {
    "missing": None,
    "wrong": StaticTokenClient("guess"),
    "wrong-scheme": StaticTokenClient(SECRET, scheme="Basic"),
    "other-header": _Headers("x-auth", f"Bearer {SECRET}"),
    "prefix": _Headers("authorization", f"Bearer {SECRET[:-1]}"),
    "longer": _Headers("authorization", f"Bearer {SECRET}x"),
}


@pytest.mark.parametrize("attacker", list(ATTACKERS))
async def test_wrong_or_missing_token_is_refused_everywhere(attacker: str) -> None:
    handled: list[bytes] = []

    async def handler(request: bytes) -> bytes:
        handled.append(request)
        return b"pong"

    async with LiveCluster.open(3, with_tokens()) as cluster:
        gid = await cluster.create_group()
        await cluster.commit(gid, b"set a 1")  # the cluster's own calls carry the token
        target = cluster.nodes[0]
        solo = await cluster.create_group([target])
        assert target.mgr.bind_data_service_request("ping", solo, handler)
        before = received(target, solo)
        async with GrpcTransport(server_uuid=str(uuid.uuid4()),
                                 lookup_peer=cluster.lookup,
                                 max_send_message_size=128 << 20,
                                 token_client=ATTACKERS[attacker]) as client:
            status, _ = await raw_call(client, target.uuid, probe(solo, target))
            assert status == Status.UNAUTHENTICATED
            with pytest.raises(TransportError) as info:
                await client.data_call(target.uuid, DataRequest(solo, "ping", b"x"), timeout=5)
            assert info.value.status == Status.UNAUTHENTICATED
            status, _ = await raw_call(client, target.uuid, b"", STATUS_PATH)
            assert status == Status.UNAUTHENTICATED
            # Refused before the body is read: an oversize body makes no difference.
            status, _ = await raw_call(client, target.uuid, b"\0" * (65 << 20), DATA_PATH)
            assert status == Status.UNAUTHENTICATED
        assert received(target, solo) == before
        assert handled == []
        await cluster.commit(gid, b"set a 2")
        cluster.check()


async def test_token_cluster_serves_everything_to_token_holders() -> None:
    async def handler(request: bytes) -> bytes:
        return request[::-1]

    async with LiveCluster.open(3, with_tokens()) as cluster:
        gid = await cluster.create_group()
        await cluster.commit(gid, b"set a 1")
        for n in cluster.nodes:
            assert n.mgr.bind_data_service_request("rev", gid, handler)
        leader = cluster.leader(gid)
        follower = next(n for n in cluster.nodes if n is not leader)
        ctx = follower.mgr.group(gid)
        assert await ctx.data_service_request_bidirectional(LEADER, "rev", b"abc") == b"cba"
        async with ExternalClient(cluster.directory,
                                  token_client=StaticTokenClient(SECRET)) as client:
            assert await client.append_entry(gid, b"set b 2", dest=follower.uuid) == b"OK"
            assert (await client.status(follower.uuid)).server_uuid == follower.uuid
        async with ExternalClient(cluster.directory, request_timeout=2) as anonymous:
            with pytest.raises(BadRequest):  # UNAUTHENTICATED maps to BAD_REQUEST
                await anonymous.append_entry(gid, b"set c 3", dest=follower.uuid)
        cluster.check()


async def test_async_token_client_and_verifier_with_custom_status() -> None:
    verifier = _AsyncVerifier()
    token = _AsyncToken()

    def configure(i: int, config: ManagerConfig) -> ManagerConfig:
        return dataclasses.replace(config, token_client=token, token_verifier=verifier)

    async with LiveCluster.open(2, configure) as cluster:
        gid = await cluster.create_group()
        await cluster.commit(gid, b"set a 1")
        assert token.calls > 0 and verifier.seen
        assert all(m.get("x-cluster-token") == "async-token" for m in verifier.seen)
        target = cluster.nodes[1]
        async with GrpcTransport(server_uuid=str(uuid.uuid4()),
                                 lookup_peer=cluster.lookup,
                                 token_client=_Headers("x-cluster-token", "nope")) as client:
            with pytest.raises(TransportError) as info:
                await client.data_call(target.uuid, DataRequest(gid, "x", b""), timeout=5)
        assert info.value.status == Status.PERMISSION_DENIED
        assert info.value.message == "not one of us"


async def test_verifier_that_raises_refuses() -> None:
    class Broken:
        def verify(self, metadata: Metadata) -> Status:
            raise RuntimeError("key server down")

    assert await run_verifier(Broken(), {}) == (
        Status.UNAUTHENTICATED, "token verifier failed: RuntimeError")

    class Nonsense:
        def verify(self, metadata: Metadata) -> object:
            return "yes"

    assert (await run_verifier(Nonsense(), {}))[0] == Status.UNAUTHENTICATED  # type: ignore[arg-type]


@pytest.mark.parametrize("key,value", [
    ("authorization", "Bearer a\r\nx-injected: 1"),
    ("Authorization", "Bearer a"),
    ("grpc-status", "0"),
    ("x-token-bin", "a"),
    ("", "a"),
])
async def test_unsendable_tokens_fail_the_call_locally(key: str, value: str) -> None:
    with pytest.raises(ValueError):
        await fetch_token(_Headers(key, value))
    async with trio.open_nursery() as nursery:
        server = GrpcTransport(server_uuid=str(uuid.uuid4()), host="127.0.0.1",
                               lookup_peer=lambda p: "")

        class Handler:
            async def raft_step(self, request: object) -> object:
                raise AssertionError("reached the handler")

        port = await nursery.start(server.serve, Handler())
        async with GrpcTransport(server_uuid=str(uuid.uuid4()),
                                 lookup_peer=lambda p: f"127.0.0.1:{port}",
                                 token_client=_Headers(key, value)) as client:
            status, _ = await raw_call(client, server.server_uuid, b"")
            assert status == Status.UNAUTHENTICATED
        nursery.cancel_scope.cancel()


def test_static_verifier() -> None:
    v = StaticTokenVerifier(["one", "two"])
    assert v.verify({"authorization": "Bearer two"}) == Status.OK
    assert v.verify({"authorization": "Bearer two,Bearer two"})[0] == Status.UNAUTHENTICATED  # type: ignore[index]
    assert v.verify({})[0] == Status.UNAUTHENTICATED  # type: ignore[index]
    with pytest.raises(ValueError):
        StaticTokenVerifier([])
