"""``nuraft-mesg server`` with peer discovery: ``--peers-file`` and ``--peer-dns`` as real
processes, and the peer options' argparse errors.

The peers-file cluster runs on three loopback *addresses* (127.0.0.1-3, which Linux routes to
``lo``) with the same port on each, so a node is told apart from another by its address only,
as on three hosts.  The DNS cluster's names go through the system resolver in the node
processes (a stub resolver installed in the test cannot reach them): the template
``localhost:<prefix>{ordinal}`` gives each pod-like member its own port behind the one name
every machine resolves.
"""

from __future__ import annotations

import contextlib
import random
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from nuraft_mesg.cli.remote import load_peers
from nuraft_mesg.cli.server import main as server_main
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import RaftError
from nuraft_mesg.transport.status import GroupStatus

from . import PYTHON, Child, Children, children

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="127.0.0.2-3 are on lo on Linux")

ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def _port_free_on(hosts: Sequence[str], port: int) -> bool:
    socks = []
    try:
        for host in hosts:
            s = socket.socket()
            socks.append(s)
            s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _common_port(hosts: Sequence[str]) -> int:
    """A port that was free on every one of ``hosts`` a moment ago."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        if _port_free_on(hosts, port):
            return port
    raise AssertionError("no port free on all of " + ", ".join(hosts))


def _server_argv(node_uuid: str, host: str, port: int, data_dir: Path, ready: Path,
                 *extra: str) -> list[str]:
    return [PYTHON, "-m", "nuraft_mesg", "-v", "server", "--uuid", node_uuid, "--host", host,
            "--port", str(port), "--data-dir", str(data_dir), "--ready-file", str(ready),
            *extra]


async def _wait_ready(child: Child, ready: Path) -> None:
    """Until the node wrote its ready file (polled: the file is the child's signal)."""
    with trio.fail_after(20):
        while not await trio.Path(ready).exists():
            if child.process.returncode is not None:
                raise AssertionError(f"{child.name} exited:\n{child.output}")
            await trio.sleep(0.05)


async def _group_status(client: ExternalClient, nodes: Sequence[str], gid: str
                        ) -> list[GroupStatus]:
    """The group's status on every node of ``nodes`` that answers."""
    groups: list[GroupStatus] = []
    for node in nodes:
        with contextlib.suppress(RaftError):
            groups += (await client.status(node, (gid,))).groups
    return groups


async def _wait_caught_up(client: ExternalClient, nodes: Sequence[str], gid: str,
                          min_commit: int) -> list[GroupStatus]:
    """Until every node of ``nodes`` hosts ``gid``, one leads it, its commit index is at least
    ``min_commit`` and every node applied it (status polled against a deadline)."""
    with trio.fail_after(15):
        while True:
            groups = await _group_status(client, nodes, gid)
            leaders = [g for g in groups if g.is_leader]
            if (len(groups) == len(nodes) and len(leaders) == 1
                    and leaders[0].commit_index >= min_commit
                    and all(g.applied_index >= leaders[0].commit_index for g in groups)):
                return groups
            await trio.sleep(0.05)


async def _write(client: ExternalClient, gid: str, dest: str, payload: bytes) -> None:
    """One acknowledged write.  The client retries while there is no leader, but a follower
    that still names the killed leader redirects to it, which fails (UNAVAILABLE) until the
    election: that is retried here, with a back-off."""
    with trio.fail_after(15):
        while True:
            try:
                await client.append_entry(gid, payload, dest)
                return
            except RaftError:
                await trio.sleep(0.1)  # retry back-off


async def _start(kids: Children, name: str, argv: list[str], ready: Path) -> Child:
    await trio.Path(ready).unlink(missing_ok=True)
    child = await kids.spawn(name, *argv)
    await _wait_ready(child, ready)
    return child


async def test_peers_file_cluster_on_three_addresses_survives_a_kill9(tmp_path: Path) -> None:
    uuids = [str(uuid.uuid4()) for _ in ADDRESSES]
    gid = str(uuid.uuid4())
    port = _common_port(ADDRESSES)
    peers = {u: f"{host}:{port}" for u, host in zip(uuids, ADDRESSES, strict=True)}
    peers_file = tmp_path / "peers.toml"
    peers_file.write_text("[peers]\n" + "".join(f'"{u}" = "{a}"\n' for u, a in peers.items()))
    assert load_peers(peers_file) == peers  # the client reads the server's file too

    def argv(i: int) -> list[str]:
        extra = ["--peers-file", str(peers_file)] + (["--create-group", gid] if i == 0 else [])
        return _server_argv(uuids[i], ADDRESSES[i], port, tmp_path / f"n{i}",
                            tmp_path / f"n{i}.ready", *extra)

    with trio.fail_after(60):
        async with children() as kids, ExternalClient(peers, request_timeout=2.0) as client:
            nodes = [await kids.spawn(f"n{i}", *argv(i)) for i in range(3)]
            for i, node in enumerate(nodes):
                await _wait_ready(node, tmp_path / f"n{i}.ready")
            for k in range(10):
                await _write(client, gid, uuids[1], b"set k%d %d" % (k, k))
            groups = await _wait_caught_up(client, uuids, gid, 10)
            assert {m.peer_id for m in groups[0].members} == set(uuids), groups[0]
            victim = next(i for i, g in enumerate(groups) if g.is_leader)  # node order
            # kill -9 the leader; the other two elect one and keep committing.
            nodes[victim].process.kill()
            await nodes[victim].process.wait()
            live = [u for i, u in enumerate(uuids) if i != victim]
            for k in range(10, 20):
                await _write(client, gid, live[k % 2], b"set k%d %d" % (k, k))
            down = await _wait_caught_up(client, live, gid, groups[victim].commit_index + 10)
            committed = max(g.commit_index for g in down)
            # Restarted on the same data dir (--create-group still given: the group is
            # stored, so it is rejoined, not created), it catches up from the others.
            nodes[victim] = await _start(kids, f"n{victim}-again", argv(victim),
                                         tmp_path / f"n{victim}.ready")
            await _write(client, gid, uuids[victim], b"set after restart 1")
            after = await _wait_caught_up(client, uuids, gid, committed + 1)
            assert after[victim].applied_index >= committed + 1
            assert {m.peer_id for m in after[victim].members} == set(uuids)
            if victim == 0:
                assert nodes[0].find("rejoined, not created"), nodes[0].output
            for node in nodes:
                assert await node.stop() == 0, node.output


def _dns_prefix() -> int:
    """A number ``p`` such that the ports ``p0``, ``p1`` and ``p2`` (decimal digits appended)
    were free on 127.0.0.1 a moment ago."""
    rng = random.Random()
    for _ in range(100):
        prefix = rng.randrange(2000, 6500)
        if all(_port_free_on(["127.0.0.1"], prefix * 10 + i) for i in range(3)):
            return prefix
    raise AssertionError("no free run of three ports")


async def test_peer_dns_cluster_resolves_names_at_connect_time(tmp_path: Path) -> None:
    """``--peer-dns 'localhost:<p>{ordinal}' --dns-members U0,U1,U2``: the nodes dial each
    other by a host name through their resolver, as StatefulSet pods do; the first one
    bootstraps the group with the other members."""
    uuids = [str(uuid.uuid4()) for _ in range(3)]
    gid = str(uuid.uuid4())
    prefix = _dns_prefix()
    template = f"localhost:{prefix}{{ordinal}}"
    dns = ["--peer-dns", template, "--dns-members", ",".join(uuids)]
    peers = {u: f"127.0.0.1:{prefix}{i}" for i, u in enumerate(uuids)}
    with trio.fail_after(45):
        async with children() as kids, ExternalClient(peers, request_timeout=2.0) as client:
            nodes = []
            for i, u in enumerate(uuids):
                create = ["--create-group", gid] if i == 0 else []
                nodes.append(await kids.spawn(f"d{i}", *_server_argv(
                    u, "127.0.0.1", prefix * 10 + i, tmp_path / f"d{i}",
                    tmp_path / f"d{i}.ready", *dns, *create)))
            for i, node in enumerate(nodes):
                await _wait_ready(node, tmp_path / f"d{i}.ready")
            for k in range(5):
                await _write(client, gid, uuids[2], b"set d%d %d" % (k, k))
            groups = await _wait_caught_up(client, uuids, gid, 5)
            assert all({m.peer_id for m in g.members} == set(uuids) for g in groups)
            for node in nodes:
                assert await node.stop() == 0, node.output


def _server_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        server_main(["--uuid", MEMBERS[0], "--data-dir", "unused", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


MEMBERS = [str(uuid.uuid4()) for _ in range(3)]


@pytest.mark.parametrize(("argv", "message"), [
    (["--peers-file", "p.toml", "--peer", f"{MEMBERS[1]}=h:1"],
     "--peer and --peers-file do not combine"),
    (["--peers-file", "p.toml", "--peer-dns", "n-{ordinal}:7000"],
     "--peers-file and --peer-dns do not combine"),
    (["--dns-members", ",".join(MEMBERS)], "--dns-members needs --peer-dns"),
    (["--peer-dns", "n-{ordinal}:7000"], "uses {ordinal}: list the members"),
    (["--peer-dns", "{uuid}.nuraft:7000", "--create-group", MEMBERS[2]],
     "--create-group with --peer-dns needs --dns-members"),
    (["--peer-dns", "n-{ordinal}:7000", "--dns-members", ",".join(MEMBERS[1:])],
     "is not one of --dns-members"),
    (["--peer-dns", "n-{ordinal}:7000", "--dns-members", f"{MEMBERS[0]},nope"],
     "'nope' is not a uuid"),
    (["--peer-dns", "n-{pod}:7000", "--dns-members", MEMBERS[0]], "use the fields"),
    (["--peer-dns", "n-{ordinal}", "--dns-members", MEMBERS[0]], "gives no host:port"),
    (["--peers-file", "missing.toml"], "peers file missing.toml"),
])
def test_peer_option_errors(capsys: pytest.CaptureFixture[str], argv: list[str],
                            message: str) -> None:
    assert message in _server_error(capsys, *argv)


def test_a_bad_peers_file_is_refused_at_start(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    bad = tmp_path / "peers.toml"
    bad.write_text('[peers]\n"not-a-uuid" = "h:1"\n')
    assert "is not a uuid" in _server_error(capsys, "--peers-file", str(bad))
