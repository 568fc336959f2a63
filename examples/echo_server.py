#!/usr/bin/env python3
"""The echo example's server (nuraft_mesg's test_package ``example_server``).

    python examples/echo_server.py --server-id N [--create G] [--port-base 9000 | --ports ...]

Server N (0..4) runs one Manager with the fixed uuid ``SERVER_UUIDS[N]`` on port
``port_base + N``; ``--create G`` creates group G (0..4, or a uuid) led by this server.
Every group uses an in-memory log and an *echo* state machine: each committed entry is printed
(``echo: server=N group=G index=I message=M``) and returned to the writer.  Group type "echo"
has auto-forwarding on, as in nuraft_mesg's example.  Members are added and entries written
with examples/echo_client.py.  Ctrl-C or SIGTERM shut the server down cleanly.
"""

from __future__ import annotations

import argparse
import sys

import trio
from echo_common import (
    GROUP_TYPE,
    SERVER_UUIDS,
    add_address_options,
    directory,
    group_uuid,
    server_index,
)

from nuraft_mesg import InMemoryApplication, Manager, ManagerConfig, RaftParams
from nuraft_mesg.cli.demo import run_until_interrupted
from nuraft_mesg.storage.interfaces import StateManager
from nuraft_mesg.storage.memory import KVStateMachine, MemoryStateManager

# nuraft_mesg's example parameters: election 200/400 ms, heartbeat 100 ms, auto-forwarding.
PARAMS = RaftParams(heartbeat_interval_ms=100, election_timeout_ms=(200, 400),
                    auto_forwarding=True)


def say(text: str) -> None:
    print(text, flush=True)


class EchoStateMachine(KVStateMachine):
    """Prints every committed entry and echoes it back."""

    def __init__(self, server: int, group_id: str) -> None:
        super().__init__()
        self.server = server
        self.group_id = group_id

    def commit(self, index: int, data: bytes) -> bytes:
        super().commit(index, data)
        say(f"echo: server={self.server} group={self.group_id} index={index} "
            f"message={data.decode(errors='replace')}")
        return data


class EchoApplication(InMemoryApplication):
    def __init__(self, server: int, peers: dict[str, str]) -> None:
        super().__init__(SERVER_UUIDS[server], peers)
        self.server = server

    def create_state_mgr(self, server_id: int, group_id: str) -> StateManager:
        smgr = self.state_managers.get(group_id)
        if smgr is None or smgr.destroyed:
            smgr = MemoryStateManager(
                server_id, self.server_uuid,
                state_machine=EchoStateMachine(self.server, group_id),
            )
            self.state_managers[group_id] = smgr
        return smgr


async def serve(args: argparse.Namespace) -> None:
    peers = directory(args)
    me = SERVER_UUIDS[args.server_id]
    port = int(peers[me].rpartition(":")[2])
    config = ManagerConfig(server_uuid=me, host=args.host, port=port,
                           default_group_type=GROUP_TYPE)
    async with Manager(config, EchoApplication(args.server_id, peers)) as mgr:
        mgr.register_group_type(GROUP_TYPE, PARAMS)
        say(f"ready: server={args.server_id} uuid={me} port={mgr.port}")
        for gid in args.create:
            await mgr.create_group(gid, GROUP_TYPE)
            say(f"created: server={args.server_id} group={gid}")
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-id", type=server_index, required=True, metavar="N")
    parser.add_argument("--create", type=group_uuid, action="append", default=[],
                        metavar="G", help="create group G (0..4 or a uuid); repeatable")
    add_address_options(parser)
    args = parser.parse_args(argv)
    interrupted = trio.run(run_until_interrupted, serve, args)
    return 0 if interrupted else 1


if __name__ == "__main__":
    sys.exit(main())
