"""Peer discovery for separate hosts: the peers file and DNS-named peers.

Unit tests of the two applications, then real Managers on three loopback addresses
(127.0.0.1-3, one port) finding each other through them: by DNS names answered by
:class:`~nuraft_mesg.testing.StaticResolver` (the machine's resolver is never touched), and
through a peers file that is rewritten when a node moves to another address.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from nuraft_mesg import DnsApplication, Manager, ManagerConfig, PeersFileApplication, RaftParams
from nuraft_mesg.app import InMemoryApplication
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing import install_static_resolver

GROUP_TYPE = "kv"
PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def write_peers(path: Path, table: dict[str, str]) -> None:
    """Replace the file atomically (as a ConfigMap update or ``mv`` does)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("[peers]\n" + "".join(f'"{u}" = "{a}"\n' for u, a in table.items()))
    os.replace(tmp, path)


def port_free_on(hosts: list[str]) -> int:
    """A port that was free a moment ago on every one of ``hosts``."""
    for _ in range(20):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            others = []
            try:
                for host in hosts[1:]:
                    s = socket.socket()
                    others.append(s)
                    s.bind((host, port))
                return port
            except OSError:
                continue
            finally:
                for s in others:
                    s.close()
    raise AssertionError("no port free on every loopback address")


# -- peers file --------------------------------------------------------------------------------
def test_peers_file_errors_name_the_file_and_the_entry(tmp_path: Path) -> None:
    me = str(uuid.uuid4())
    path = tmp_path / "peers.toml"
    with pytest.raises(ValueError, match=r"peers\.toml"):
        PeersFileApplication(me, path)  # missing
    cases = {
        "[peers\n": r"peers\.toml",
        "x = 1\n": "no \\[peers\\] table",
        '[peers]\n"not-a-uuid" = "127.0.0.1:1"\n': "'not-a-uuid' is not a uuid",
        f'[peers]\n"{me}" = "127.0.0.1"\n': "expected host:port",
        f'[peers]\n"{me}" = 7000\n': "is not a \"host:port\" string",
        f'[peers]\n"{me}" = "h:99999"\n': "port out of range",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            PeersFileApplication(me, path)


def test_peers_file_is_reread_when_it_changes_and_a_bad_edit_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    me, peer = str(uuid.uuid4()), str(uuid.uuid4())
    path = tmp_path / "peers.toml"
    write_peers(path, {me: "127.0.0.1:7000", peer: "127.0.0.2:7000"})
    app = PeersFileApplication(me, path)
    assert app.lookup_peer(peer) == "127.0.0.2:7000"
    assert app.lookup_peer(str(uuid.uuid4())) == ""

    write_peers(path, {me: "127.0.0.1:7000", peer: "peer.example.test:7001"})
    assert app.lookup_peer(peer) == "peer.example.test:7001"

    path.write_text("[peers]\n\"half-written")  # a broken edit: the old table stays
    assert app.lookup_peer(peer) == "peer.example.test:7001"
    path.unlink()  # so does a missing file
    assert app.lookup_peer(peer) == "peer.example.test:7001"
    write_peers(path, {me: "127.0.0.1:7000"})  # a removed peer becomes unknown
    assert app.lookup_peer(peer) == ""


# -- DNS templates -----------------------------------------------------------------------------
def test_dns_template_by_ordinal_and_by_uuid() -> None:
    members = [str(uuid.uuid4()) for _ in range(3)]
    app = DnsApplication(members[0], "nuraft-{ordinal}.nuraft.default.svc:7000", members)
    assert [app.lookup_peer(m) for m in members] == [
        f"nuraft-{i}.nuraft.default.svc:7000" for i in range(3)
    ]
    assert app.peers() == members[1:]
    assert app.lookup_peer(str(uuid.uuid4())) == ""  # not a member: no ordinal
    assert app.lookup_peer("nuraft-0.evil:1") == ""  # only uuids go into a DNS name

    by_uuid = DnsApplication(members[0], "{uuid}.nodes.test", default_port=7100)
    stranger = str(uuid.uuid4())
    assert by_uuid.lookup_peer(stranger) == f"{stranger}.nodes.test:7100"


@pytest.mark.parametrize(
    ("template", "members", "message"),
    [
        ("static.name:7000", True, "use the fields"),
        ("{host}.svc:7000", True, "use the fields"),
        ("node-{ordinal}.svc:7000", False, "list the members"),
        ("node-{ordinal}.svc", True, "gives no host:port"),
    ],
)
def test_dns_template_mistakes_are_refused(template: str, members: bool, message: str) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)] if members else []
    with pytest.raises(ValueError, match=message):
        DnsApplication(str(uuid.uuid4()), template, ids)


# -- real Managers on three addresses ----------------------------------------------------------
class Nodes:
    """Managers on their own addresses, each stoppable (like a process whose state survives in
    its application's state managers)."""

    def __init__(self, nursery: trio.Nursery, port: int) -> None:
        self._nursery = nursery
        self.port = port
        self.managers: dict[str, Manager] = {}
        self._scopes: dict[str, trio.CancelScope] = {}

    async def start(self, app: InMemoryApplication, host: str) -> Manager:
        mgr: Manager = await self._nursery.start(self._run, app, host)
        for gid, smgr in app.state_managers.items():  # rejoin after a restart
            await mgr.join_group(gid, GROUP_TYPE, smgr)
        return mgr

    async def _run(self, app: InMemoryApplication, host: str, *,
                   task_status: trio.TaskStatus[Manager]) -> None:
        config = ManagerConfig(server_uuid=app.server_uuid, host=host, port=self.port,
                               default_group_type=GROUP_TYPE)
        with trio.CancelScope() as scope:
            self._scopes[app.server_uuid] = scope
            async with Manager(config, app) as mgr:
                mgr.register_group_type(GROUP_TYPE, PARAMS)
                self.managers[app.server_uuid] = mgr
                task_status.started(mgr)
                await trio.sleep_forever()
        del self.managers[app.server_uuid]

    def stop(self, node_uuid: str) -> None:
        self._scopes.pop(node_uuid).cancel()


@asynccontextmanager
async def nodes_on(port: int) -> AsyncIterator[Nodes]:
    async with trio.open_nursery() as nursery:
        yield Nodes(nursery, port)
        nursery.cancel_scope.cancel()


async def wait_until(mgr: Manager, predicate: Callable[[], bool]) -> None:
    while not predicate():
        await mgr.wait_changed()


def applied(app: InMemoryApplication, gid: str) -> dict[str, str]:
    sm = app.state_managers[gid].get_state_machine()
    assert isinstance(sm, KVStateMachine)
    return sm.data


def has_key_v(app: InMemoryApplication, gid: str) -> bool:
    return applied(app, gid).get("k") == "v"


async def form_group(nodes: Nodes, apps: list[InMemoryApplication], gid: str) -> Manager:
    """Start ``apps`` on HOSTS, create ``gid`` on the first and add the others; the leader."""
    for app, host in zip(apps, HOSTS, strict=True):
        await nodes.start(app, host)
    leader = nodes.managers[apps[0].server_uuid]
    await leader.create_group(gid, GROUP_TYPE)
    for app in apps[1:]:
        await leader.add_member(gid, app.server_uuid)
    return leader


async def test_dns_named_peers_form_a_group_across_three_addresses() -> None:
    port = port_free_on(HOSTS)
    members = [str(uuid.uuid4()) for _ in HOSTS]
    resolver = install_static_resolver(
        {f"node-{i}.raft.test": host for i, host in enumerate(HOSTS)}
    )
    apps: list[InMemoryApplication] = [
        DnsApplication(m, f"node-{{ordinal}}.raft.test:{port}", members) for m in members
    ]
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with nodes_on(port) as nodes:
            leader = await form_group(nodes, apps, gid)
            assert await leader.append_entries(gid, [b"set k v"]) == [b"OK"]
            for app in apps:
                await wait_until(nodes.managers[app.server_uuid],
                                 functools.partial(has_key_v, app, gid))
    # The leader's transport resolved both followers by name (not by a table of IPs).
    assert {"node-1.raft.test", "node-2.raft.test"} <= set(resolver.lookups)


async def test_peers_file_cluster_follows_a_node_that_moved(tmp_path: Path) -> None:
    """Node 3 stops, comes back on 127.0.0.4 and the peers file is rewritten: the others find
    it at its new address (the file is reread on the reconnect) and it catches up."""
    port = port_free_on([*HOSTS, "127.0.0.4"])
    ids = [str(uuid.uuid4()) for _ in HOSTS]
    path = tmp_path / "peers.toml"
    write_peers(path, {u: f"{h}:{port}" for u, h in zip(ids, HOSTS, strict=True)})
    apps: list[InMemoryApplication] = [PeersFileApplication(u, path) for u in ids]
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with nodes_on(port) as nodes:
            leader = await form_group(nodes, apps, gid)
            assert await leader.append_entries(gid, [b"set a 1"]) == [b"OK"]
            nodes.stop(ids[2])
            assert await leader.append_entries(gid, [b"set b 2"]) == [b"OK"]  # 2 of 3

            write_peers(path, {**{u: f"{h}:{port}" for u, h in zip(ids, HOSTS, strict=True)},
                               ids[2]: f"127.0.0.4:{port}"})
            moved = await nodes.start(apps[2], "127.0.0.4")
            assert await leader.append_entries(gid, [b"set c 3"]) == [b"OK"]
            await wait_until(moved, lambda: applied(apps[2], gid) == {"a": "1", "b": "2",
                                                                     "c": "3"})
