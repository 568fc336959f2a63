"""Ports of nuraft_mesg's DataServiceTest (inventory §5) and the data service's own tests.

The C++ fixture (``MessagingFixtureBase``): three applications with random uuids and ports,
default group type ``test_type``, 65 MiB message limits, election 200/400 ms, heartbeat
100 ms, max_append_size 10; every application starts its own state managers with priority
100 and binds ``send_data`` and ``request_data`` (both echo the request and count
completions; ``send_data`` also checks the payload).  ``start()``: app1 creates the group,
adds app2 with ``add_member``, and an *external client* adds app3 through app1.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from nuraft_mesg.client import ExternalClient
from nuraft_mesg.manager import ManagerConfig, to_server_id
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.testing.local import LocalCluster, LocalNode

GROUP_TYPE = "test_type"
PARAMS = RaftParams(
    heartbeat_interval_ms=100, election_timeout_ms=(200, 400), max_append_entries=10
)
MAX_MESSAGE = 65 << 20
SEND_DATA = "send_data"
REQUEST_DATA = "request_data"


def payload(n_blobs: int = 8) -> list[bytes]:
    """The C++ tests' payload: ``n_blobs`` blobs, each a uint32 counter."""
    return [struct.pack("<I", i) for i in range(n_blobs)]


def check_payload(data: bytes) -> bool:
    if len(data) % 4:
        return False
    return all(
        struct.unpack_from("<I", data, 4 * i)[0] == i for i in range(min(len(data) // 4, 8))
    )


class Completions:
    """Server-side completion counter (the C++ tests' static counter), per group and node."""

    def __init__(self) -> None:
        self.per_group: Counter[str] = Counter()
        self.per_node: Counter[tuple[str, str]] = Counter()
        self.bad_payloads = 0

    @property
    def total(self) -> int:
        return sum(self.per_group.values())

    def bind(self, node: LocalNode, group_id: str) -> None:
        """Bind ``send_data`` and ``request_data`` for ``group_id`` on ``node``."""

        async def send_data(data: bytes) -> bytes:
            if not check_payload(data):
                self.bad_payloads += 1
            self._count(node, group_id)
            return data

        async def request_data(data: bytes) -> bytes:
            self._count(node, group_id)
            return data

        mgr = node.mgr
        assert mgr.bind_data_service_request(SEND_DATA, group_id, send_data)
        assert mgr.bind_data_service_request(REQUEST_DATA, group_id, request_data)

    def _count(self, node: LocalNode, group_id: str) -> None:
        self.per_group[group_id] += 1
        self.per_node[(node.name, group_id)] += 1


@dataclasses.dataclass
class Fixture:
    cluster: LocalCluster
    client: ExternalClient
    group_id: str
    completions: Completions

    @property
    def apps(self) -> list[LocalNode]:
        return self.cluster.nodes

    async def add_app(self, *, bind: tuple[str, ...] = ()) -> LocalNode:
        node = await self.cluster.add_node(priority=100)
        for gid in bind:
            self.completions.bind(node, gid)
        return node

    async def wait_member(self, leader: LocalNode, gid: str, member: LocalNode) -> None:
        """Until ``member`` is in ``leader``'s configuration (nuraft_mesg's add_member wait)."""
        sid = to_server_id(member.uuid)

        def joined() -> bool:
            mgr = leader.manager
            return mgr is not None and any(s.id == sid for s in mgr.get_srv_config_all(gid))

        await self.cluster.wait_until(joined)


@asynccontextmanager
async def data_fixture() -> AsyncIterator[Fixture]:
    """The C++ fixture's ``start(data_svc=true)`` (without its 1 s sleeps: every step waits
    for the condition it needs)."""
    gid = str(uuid.uuid4())

    def configure(config: ManagerConfig) -> ManagerConfig:
        return dataclasses.replace(config, max_message_size=MAX_MESSAGE)

    async with LocalCluster.open(
        3, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE, configure=configure
    ) as cluster:
        completions = Completions()
        for node in cluster.nodes:
            completions.bind(node, gid)
        app1, app2, app3 = cluster.nodes
        async with ExternalClient(cluster.directory, max_message_size=MAX_MESSAGE) as client:
            fx = Fixture(cluster, client, gid, completions)
            await app1.mgr.create_group(gid, GROUP_TYPE)
            await app1.mgr.add_member(gid, app2.uuid)
            await client.add_server(gid, app3.uuid, dest=app1.uuid)
            await fx.wait_member(app1, gid, app3)
            yield fx
            # TearDown: leave_group on app3, app2, app1 (and any other app).
            for node in reversed(cluster.nodes):
                if node.manager is not None:
                    with trio.CancelScope(shield=True):
                        await node.mgr.leave_group(gid)
