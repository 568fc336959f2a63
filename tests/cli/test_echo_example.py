"""nuraft_mesg's test_package scenario (``run_tests.sh``) with real processes: five echo
servers, two groups; create the groups, add members through server 0, write through a
follower, add a 4th member through another follower, remove a member, then check the
message is in every member's log."""

from __future__ import annotations

import json

import trio

from . import EXAMPLES, PYTHON, Child, children, free_ports, run


async def test_five_servers_two_groups() -> None:
    ports = ",".join(str(p) for p in free_ports(5))
    addr = ("--ports", ports)

    async def client(*args: str) -> str:
        done = await run(PYTHON, str(EXAMPLES / "echo_client.py"), *args, *addr)
        out = done.stdout.decode() + done.stderr.decode()
        assert done.returncode == 0, f"echo_client {' '.join(args)} failed:\n{out}"
        return out

    def has(group: str, message: str) -> str:
        return rf"^echo: server=\d group={group} index=\d+ message={message}$"

    with trio.fail_after(60):
        async with children() as kids:
            servers: list[Child] = []
            for n in range(5):
                extra = {0: ("--create", "0"), 4: ("--create", "1")}.get(n, ())
                servers.append(await kids.spawn(
                    f"server{n}", PYTHON, str(EXAMPLES / "echo_server.py"),
                    "--server-id", str(n), *extra, *addr,
                ))
            uuids = [(await s.wait_line(rf"^ready: server={n} uuid=(\S+) port=")).group(1)
                     for n, s in enumerate(servers)]
            g0 = (await servers[0].wait_line("^created: server=0 group=(\\S+)$")).group(1)
            g1 = (await servers[4].wait_line("^created: server=4 group=(\\S+)$")).group(1)

            # Members added through server 0 (group 0) and through server 4 (group 1).
            await client("-g", "0", "--server", "0", "--add", "1")
            await client("-g", "0", "--server", "0", "--add", "2")
            await client("-g", "1", "--server", "4", "--add", "3")
            await client("-g", "1", "--server", "4", "--add", "0")

            # Writes through followers: the client follows the leader redirect.
            out = await client("-g", "0", "--server", "1", "-m", "hello")
            assert "echoed: hello" in out
            out = await client("-g", "1", "--server", "3", "-m", "world")
            assert "echoed: world" in out

            # A 4th member through server 2 (a follower), then remove server 1 through
            # server 0 (retried while the join or the config change is in flight).
            await client("-g", "0", "--server", "2", "--add", "3")
            out = await client("-g", "0", "--server", "0", "--remove", "1")
            assert "removed server 1" in out

            # The message is in every member's log (server 3 joined after the write).
            for n in (0, 2, 3):
                await servers[n].wait_line(has(g0, "hello"))
            for n in (4, 3, 0):
                await servers[n].wait_line(has(g1, "world"))
            assert not servers[2].find(f"group={g1}")  # never a member of group 1

            # The removed member is gone from the configuration the leader reports.
            first = ports.split(",")[0]
            done = await run(PYTHON, "-m", "nuraft_mesg", "status", "--server",
                             f"127.0.0.1:{first}", "-g", g0, "--json")
            assert done.returncode == 0, done.stderr.decode()
            status = json.loads(done.stdout)
            (group,) = status["groups"]
            assert group["is_leader"]
            members = {m["peer_id"] for m in group["members"]}
            assert members == {uuids[0], uuids[2], uuids[3]}

            for server in servers:
                assert await server.stop() == 0, server.output
