"""The ``nuraft-mesg`` command line: ``--help`` of every subcommand, and server + client +
status as real processes."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from nuraft_mesg.cli.remote import client_main, load_peers, parse_peer, status_main
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import RaftError
from nuraft_mesg.transport.status import NodeStatus

from . import PYTHON, children, free_ports, run

SUBCOMMANDS = ["demo", "server", "client", "status", "repl"]


async def test_top_level_help_lists_every_subcommand() -> None:
    done = await run(PYTHON, "-m", "nuraft_mesg", "--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    for name in SUBCOMMANDS:
        assert name in text


@pytest.mark.parametrize("command", SUBCOMMANDS)
async def test_subcommand_help(command: str) -> None:
    done = await run(PYTHON, "-m", "nuraft_mesg", command, "--help")
    out = done.stdout.decode() + done.stderr.decode()
    if command == "repl" and "nuraft_mesg.repl is missing" in out:
        assert done.returncode == 2  # the REPL module is not installed yet: a clear error
        return
    assert done.returncode == 0, out
    assert "usage:" in out


def test_peer_parsing(tmp_path: Path) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    assert parse_peer(f"{a}=127.0.0.1:1") == (a, "127.0.0.1:1")
    text = tmp_path / "peers.txt"
    text.write_text(f"# the cluster\n{a}=127.0.0.1:1\n{b} 127.0.0.1:2  # second\n\n")
    assert load_peers(text) == {a: "127.0.0.1:1", b: "127.0.0.1:2"}
    js = tmp_path / "peers.json"
    js.write_text(json.dumps({a: "127.0.0.1:1"}))
    assert load_peers(js) == {a: "127.0.0.1:1"}
    toml = tmp_path / "peers.toml"  # the server's --peers-file format
    toml.write_text(f'# the cluster\n[peers]\n"{a}" = "127.0.0.1:1"\n"{b}" = "h2:2"\n')
    assert load_peers(toml) == {a: "127.0.0.1:1", b: "h2:2"}
    toml.write_text(f'[peers]\n"{a}" = 7\n')
    with pytest.raises(ValueError, match="is not a \"host:port\" string"):
        load_peers(toml)
    with pytest.raises(Exception, match="not a uuid"):
        parse_peer("nope=127.0.0.1:1")


def test_client_reports_errors_with_their_code(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)  # nothing listens there
    rc = client_main(["--server", str(uuid.uuid4()), "-g", str(uuid.uuid4()), "-m", "x",
                      "--peer", f"{uuid.uuid4()}=127.0.0.1:{port}", "--timeout", "1"])
    assert rc == 1
    assert "error: SERVER_NOT_FOUND" in capsys.readouterr().err
    rc = status_main(["--server", f"127.0.0.1:{port}", "--timeout", "1"], out=io.StringIO())
    assert rc == 1


async def _status_until(
    address: str, predicate: Callable[[NodeStatus], bool], group: str
) -> NodeStatus:
    """Poll ``Admin/Status`` of ``address`` until ``predicate(status)`` (deadline: the
    caller's)."""
    async with ExternalClient({}) as client:
        while True:
            try:
                status = await client.status(address, (group,))
                if predicate(status):
                    return status
            except RaftError:
                pass  # not serving yet
            await trio.sleep(0.05)  # poll interval


async def test_server_client_status_processes(tmp_path: Path) -> None:
    gid = str(uuid.uuid4())
    u1, u2 = str(uuid.uuid4()), str(uuid.uuid4())
    p1, p2 = free_ports(2)
    a1, a2 = f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"
    peers = ["--peer", f"{u1}={a1}", "--peer", f"{u2}={a2}"]
    with trio.fail_after(45):
        async with children() as kids:
            s1 = await kids.spawn(
                "server1", PYTHON, "-m", "nuraft_mesg", "server", "--uuid", u1, "--port",
                str(p1), "--data-dir", str(tmp_path / "s1"), "--peer", f"{u2}={a2}",
                "--create-group", gid,
            )
            s2 = await kids.spawn(
                "server2", PYTHON, "-m", "nuraft_mesg", "server", "--uuid", u2, "--port",
                str(p2), "--data-dir", str(tmp_path / "s2"), "--peer", f"{u1}={a1}",
            )

            def formed(st: NodeStatus) -> bool:
                if not st.groups:
                    return False
                g = st.groups[0]
                return g.is_leader and sum(not m.is_new_joiner for m in g.members) == 2

            await _status_until(a1, formed, gid)
            await _status_until(a2, lambda st: bool(st.groups) and st.groups[0].leader_id == u1,
                                gid)

            # Write through the follower: the client follows the redirect to server 1.
            done = await run(PYTHON, "-m", "nuraft_mesg", "client", "--server", a2, *peers,
                             "-g", gid, "-m", "set colour blue")
            assert done.returncode == 0, done.stderr.decode()
            assert "appended; result: OK" in done.stdout.decode()
            # Read it back through the follower (at the leader's read index), and a miss.
            done = await run(PYTHON, "-m", "nuraft_mesg", "client", "--server", a2, *peers,
                             "-g", gid, "--get", "colour")
            assert done.returncode == 0, done.stderr.decode()
            assert "colour = blue" in done.stdout.decode()
            done = await run(PYTHON, "-m", "nuraft_mesg", "client", "--server", a1, *peers,
                             "-g", gid, "--get", "size", "--mode", "stale")
            assert "size is not set" in done.stdout.decode(), done.stderr.decode()

            # The table on the leader: group, leader (this node), term, commit, members, lag.
            done = await run(PYTHON, "-m", "nuraft_mesg", "status", "--server", a1)
            assert done.returncode == 0, done.stderr.decode()
            table = done.stdout.decode()
            assert gid[:8] in table and "(this node)" in table
            for column in ("leader", "term", "commit", "members", "lag"):
                assert column in table
            assert f"{u2[:8]}:" in table  # the follower's lag, known on the leader

            # JSON on the follower: it knows the leader and has applied the write.
            st2 = await _status_until(
                a2, lambda st: bool(st.groups) and st.groups[0].applied_index
                >= st.groups[0].commit_index > 0, gid)
            done = await run(PYTHON, "-m", "nuraft_mesg", "status", "--server", a2, "--json")
            report = json.loads(done.stdout)
            assert report["server_uuid"] == u2
            (group,) = report["groups"]
            assert group["leader_id"] == u1 and not group["is_leader"]
            assert group["commit_index"] >= st2.groups[0].commit_index

            # Remove server 2 through itself (redirected to the leader).
            done = await run(PYTHON, "-m", "nuraft_mesg", "client", "--server", u2, *peers,
                             "-g", gid, "--remove", u2)
            assert done.returncode == 0, done.stderr.decode()
            await _status_until(a1, lambda st: len(st.groups[0].members) == 1, gid)

            for child in (s1, s2):
                assert await child.stop() == 0, child.output
