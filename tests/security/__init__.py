"""Helpers for the security tests: certificates, a checked live cluster, raw clients.

* :func:`make_certs` writes a trustme CA, node certificates (for 127.0.0.1 / localhost), a
  certificate from another CA and an expired one into a directory.
* :class:`LiveCluster` is the simulation harness's :class:`~nuraft_mesg.testing.cluster.
  SimCluster` with real GrpcTransports on loopback (optionally TLS and tokens): real Managers
  whose group cores are observed by the harness's :class:`~nuraft_mesg.testing.checkers.
  ClusterChecker` (Election Safety, Leader Append-Only, Log Matching, Leader Completeness,
  State Machine Safety, monotonic term/commit, acknowledged writes).
* :func:`raw_call` sends arbitrary bytes as the body of any method of a node.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trustme

from nuraft_mesg.manager import Manager, ManagerConfig
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.testing.cluster import SimCluster, SimNode
from nuraft_mesg.testing.sim import SimNetwork
from nuraft_mesg.transport.base import Status, Transport, TransportError
from nuraft_mesg.transport.grpc import GrpcTransport

PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))
LOCALHOST = "127.0.0.1"

RAFT_PATH = ("nuraft_mesg.Messaging", "RaftStep", "nuraft_mesg.RaftGroupMsg")
DATA_PATH = ("nuraft_mesg.DataService", "Call", "nuraft_mesg.DataServiceRequest")
STATUS_PATH = ("nuraft_mesg.Admin", "Status", "nuraft_mesg.StatusRequest")


# -- certificates -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Certs:
    """PEM files (paths) for the TLS tests."""

    ca: str
    """The cluster's CA."""
    node_cert: str
    node_key: str
    """Valid for 127.0.0.1 and localhost, signed by ``ca`` (server and client use)."""
    client_cert: str
    client_key: str
    """A second valid certificate from ``ca`` (an external client's)."""
    other_ca: str
    other_cert: str
    other_key: str
    """A CA the cluster does not trust, and a certificate it signed."""
    expired_cert: str
    expired_key: str
    """Signed by ``ca`` but expired yesterday."""


def _write_leaf(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[str, str]:
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA()
    other = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    ca_path, other_path = directory / "ca.pem", directory / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    other.cert_pem.write_to_path(str(other_path))
    node = _write_leaf(ca.issue_cert(LOCALHOST, "localhost"), directory, "node")
    client = _write_leaf(ca.issue_cert("client.example"), directory, "client")
    foreign = _write_leaf(other.issue_cert(LOCALHOST, "localhost"), directory, "foreign")
    expired = _write_leaf(
        ca.issue_cert(LOCALHOST, "localhost", not_before=now - datetime.timedelta(days=2),
                      not_after=now - datetime.timedelta(days=1)),
        directory, "expired",
    )
    return Certs(str(ca_path), *node, *client, str(other_path), *foreign, *expired)


# -- a live cluster under the harness's checkers ----------------------------------------------
LiveNode = SimNode
NodeConfigure = Callable[[int, ManagerConfig], ManagerConfig]
"""Adjusts node ``i``'s ManagerConfig (TLS, tokens, limits)."""


class LiveCluster(SimCluster):
    """:class:`~nuraft_mesg.testing.cluster.SimCluster` over real GrpcTransports on loopback
    (see the module doc): the SimNetwork is left unused, so partitions, link faults and
    :meth:`recent_messages` do not apply.  ``open(n, configure)``: ``configure(i, config)``
    adjusts node ``i``'s ManagerConfig; the node's transport is the one it describes."""

    def __init__(self, nursery: trio.Nursery, network: SimNetwork, *,
                 configure_node: NodeConfigure | None = None, **kwargs: Any) -> None:
        self._configure_node = configure_node
        self._configs: dict[str, ManagerConfig] = {}
        self.directory: dict[str, str] = {}
        """Node uuid -> "host:port" of its server."""
        kwargs.setdefault("params", PARAMS)
        super().__init__(nursery, network, configure=self._configured,
                         transport_factory=self._grpc_transport, **kwargs)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, nodes: int = 3, configure: NodeConfigure | None = None, **kwargs: Any
    ) -> AsyncIterator[LiveCluster]:
        async with super().open(nodes, configure_node=configure, **kwargs) as cluster:
            assert isinstance(cluster, LiveCluster)
            yield cluster
            # SimCluster reports a Manager that died to the checker instead of raising.
            cluster.check()

    def _configured(self, config: ManagerConfig) -> ManagerConfig:
        index = next(i for i, n in enumerate(self.nodes) if n.uuid == config.server_uuid)
        if self._configure_node is not None:
            config = self._configure_node(index, config)
        self._configs[config.server_uuid] = config
        return config

    def _grpc_transport(self, network: SimNetwork, uuid: str) -> Transport:
        return self._configs.pop(uuid).make_transport(self.lookup)

    async def _start(self, node: SimNode) -> Manager:
        mgr = await super()._start(node)
        self.directory[node.uuid] = f"{LOCALHOST}:{mgr.port}"
        return mgr

    def lookup(self, peer: str) -> str:
        """Peer uuid -> "host:port" ("" if unknown), for clients of the cluster."""
        return self.directory.get(peer, "")

    async def commit(self, group_id: str, data: bytes,
                     timeout: float = 20.0) -> int:  # noqa: ASYNC109
        """Write through the leader (retrying while there is none or it fails); returns the
        index the checker found it applied at.  Proves the group still commits."""
        with trio.fail_after(timeout):
            while True:
                leader = self.leader(group_id)
                if leader is not None:
                    w = await self.write_and_wait(group_id, data, via=leader)
                    if w.acked:
                        break
                await trio.sleep(0.05)
        assert w.index is not None, self.checker.violations
        return w.index


# -- raw calls --------------------------------------------------------------------------------
async def raw_call(
    transport: GrpcTransport,
    peer: str,
    payload: bytes,
    path: tuple[str, str, str] = RAFT_PATH,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> tuple[Status, bytes]:
    """Send ``payload`` (any bytes) as the one message of a unary call; the status and reply
    bytes (empty unless OK)."""
    try:
        data = await transport.client._round_trip(peer, payload, timeout, path)
    except TransportError as exc:
        return exc.status, b""
    return Status.OK, data


# -- bookkeeping of hostile inputs (reported at the end of the run, see conftest.py) -----------
INPUTS: dict[str, int] = {}


def count_input(kind: str, n: int = 1) -> None:
    INPUTS[kind] = INPUTS.get(kind, 0) + n
