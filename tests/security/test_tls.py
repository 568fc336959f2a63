"""TLS and mutual TLS between real Managers (certificates made by trustme).

A node with TLS serves only TLS with ALPN h2; with mutual TLS it also requires a client
certificate signed by its CA.  A client that cannot complete the handshake - plain TCP, no
certificate, a certificate from another CA, an expired one, or a CA that does not vouch for
the server - gets UNAVAILABLE and reaches no group: the probe below counts as a received Raft
message only if it gets through."""

from __future__ import annotations

import dataclasses
import logging
import uuid

import pytest
import trio

from nuraft_mesg.client import ExternalClient
from nuraft_mesg.data_service import LEADER
from nuraft_mesg.errors import RaftError
from nuraft_mesg.manager import ManagerConfig
from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.transport.base import Status
from nuraft_mesg.transport.codec import encode_group_msg
from nuraft_mesg.transport.grpc import GrpcTransport
from nuraft_mesg.transport.security import TlsConfig

from . import Certs, LiveCluster, LiveNode, raw_call


def tls_config(certs: Certs, *, mutual: bool) -> ManagerConfig:
    return ManagerConfig(server_uuid=str(uuid.uuid4()), ssl_cert=certs.node_cert,
                         ssl_key=certs.node_key, ssl_ca=certs.ca, ssl_mutual=mutual)


def with_tls(certs: Certs, *, mutual: bool):  # type: ignore[no-untyped-def]
    def configure(i: int, config: ManagerConfig) -> ManagerConfig:
        return dataclasses.replace(config, ssl_cert=certs.node_cert, ssl_key=certs.node_key,
                                   ssl_ca=certs.ca, ssl_mutual=mutual)

    return configure


def probe(group_id: str, node: LiveNode) -> bytes:
    """A PING for ``node``'s group: answered (and counted) only if it reaches the group."""
    msg = Message(MsgType.PING_REQUEST, 0, 12345, node.server_id)
    return encode_group_msg(group_id, "", node.uuid, msg)


def received(node: LiveNode, group_id: str) -> int:
    return node.mgr.group(group_id).statistics().messages_received


async def echo(request: bytes) -> bytes:
    return b"echo:" + request


async def _cluster_works(cluster: LiveCluster) -> str:
    gid = await cluster.create_group()
    await cluster.commit(gid, b"set k v")
    leader = cluster.leader(gid)
    assert leader is not None
    for n in cluster.nodes:
        assert n.mgr.bind_data_service_request("echo", gid, echo)
    follower = next(n for n in cluster.nodes if n is not leader)
    with trio.fail_after(10):
        reply = await follower.mgr.group(gid).data_service_request_bidirectional(
            LEADER, "echo", b"hi")
    assert reply == b"echo:hi"
    cluster.check()
    return gid


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_tls_cluster_replicates_and_serves_data(certs: Certs, mutual: bool) -> None:
    async with LiveCluster.open(3, with_tls(certs, mutual=mutual)) as cluster:
        assert all(n.mgr.transport.tls is not None for n in cluster.nodes)  # type: ignore[attr-defined]
        await _cluster_works(cluster)


def _refused_clients(certs: Certs) -> dict[str, TlsConfig | None]:
    return {
        "plaintext": None,
        "no-client-cert": TlsConfig(ca_file=certs.ca),
        "foreign-client-cert": TlsConfig(cert_file=certs.other_cert, key_file=certs.other_key,
                                         ca_file=certs.ca),
        "expired-client-cert": TlsConfig(cert_file=certs.expired_cert,
                                         key_file=certs.expired_key, ca_file=certs.ca),
        "wrong-ca": TlsConfig(cert_file=certs.client_cert, key_file=certs.client_key,
                              ca_file=certs.other_ca),
    }


CLIENTS = ["plaintext", "no-client-cert", "foreign-client-cert", "expired-client-cert",
           "wrong-ca"]


@pytest.mark.parametrize("client", CLIENTS)
async def test_mutual_tls_refuses_clients_without_a_valid_certificate(
    certs: Certs, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nuraft_mesg.transport.grpc")
    async with LiveCluster.open(3, with_tls(certs, mutual=True)) as cluster:
        gid = await _cluster_works(cluster)
        target = cluster.nodes[0]
        solo = await cluster.create_group([target])  # nobody else sends to it
        before = received(target, solo)
        tls = _refused_clients(certs)[client]
        for path in (("nuraft_mesg.Messaging", "RaftStep", ""),
                     ("nuraft_mesg.DataService", "Call", ""),
                     ("nuraft_mesg.Admin", "Status", "")):
            # a new client each time: no reconnect backoff after the previous failure
            async with GrpcTransport(server_uuid=str(uuid.uuid4()),
                                     lookup_peer=cluster.lookup, tls=tls) as attacker:
                status, _ = await raw_call(attacker, target.uuid, probe(solo, target), path)
            assert status == Status.UNAVAILABLE, (client, path, status)
        assert received(target, solo) == before
        # The door held and the house still stands: the cluster commits, invariants hold.
        await cluster.commit(gid, b"set after refused")
        cluster.check()
    why = {
        "plaintext": "WRONG_VERSION_NUMBER",
        "no-client-cert": "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "foreign-client-cert": "CERTIFICATE_VERIFY_FAILED",
        "expired-client-cert": "certificate has expired",
        "wrong-ca": "",  # refused by the client itself: the server sees a dropped handshake
    }[client]
    refusals = [r.getMessage() for r in caplog.records if "refused TLS handshake" in
                r.getMessage()]
    assert refusals and why in refusals[0], refusals


async def test_external_client_with_client_certificate(certs: Certs) -> None:
    async with LiveCluster.open(3, with_tls(certs, mutual=True)) as cluster:
        gid = await cluster.create_group()
        await cluster.commit(gid, b"set a 1")
        tls = TlsConfig(cert_file=certs.client_cert, key_file=certs.client_key,
                        ca_file=certs.ca)
        node = cluster.nodes[1]
        async with ExternalClient(cluster.directory, tls=tls, request_timeout=5) as client:
            result = await client.append_entry(gid, b"set b 2", dest=node.uuid)
            assert result == b"OK"
            status = await client.status(node.uuid)
            assert status.server_uuid == node.uuid
        async with ExternalClient(cluster.directory, tls=TlsConfig(ca_file=certs.ca),
                                  request_timeout=2) as anonymous:
            with pytest.raises(RaftError):
                await anonymous.append_entry(gid, b"set c 3", dest=node.uuid)
        cluster.check()


async def test_a_probe_that_gets_through_is_counted(certs: Certs) -> None:
    """The control for the refusal tests: the same probe over valid mTLS reaches the group."""
    async with LiveCluster.open(1, with_tls(certs, mutual=True)) as cluster:
        target = cluster.nodes[0]
        solo = await cluster.create_group([target])
        before = received(target, solo)
        tls = TlsConfig(cert_file=certs.client_cert, key_file=certs.client_key,
                        ca_file=certs.ca)
        async with GrpcTransport(server_uuid=str(uuid.uuid4()),
                                 lookup_peer=cluster.lookup, tls=tls) as client:
            status, _ = await raw_call(client, target.uuid, probe(solo, target))
        assert status == Status.OK
        assert received(target, solo) == before + 1


def test_tls_settings_are_validated(certs: Certs, tmp_path: object) -> None:
    with pytest.raises(ValueError):
        ManagerConfig(server_uuid=str(uuid.uuid4()), ssl_cert=certs.node_cert)
    with pytest.raises(ValueError):
        ManagerConfig(server_uuid=str(uuid.uuid4()), ssl_ca=certs.ca)
    with pytest.raises(ValueError):
        TlsConfig(cert_file=certs.node_cert, key_file=certs.node_key, mutual=True)
    config = tls_config(certs, mutual=True)
    assert config.tls == TlsConfig(cert_file=certs.node_cert, key_file=certs.node_key,
                                   ca_file=certs.ca, mutual=True)
    with pytest.raises(OSError):
        GrpcTransport(server_uuid=str(uuid.uuid4()), lookup_peer=lambda p: "",
                      tls=TlsConfig(cert_file="/nonexistent.pem", key_file="/nonexistent.key"))
