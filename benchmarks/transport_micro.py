#!/usr/bin/env python3
"""Transport micro-benchmark: RaftStep round trips through nuraft_mesg's GrpcTransport with a
handler that answers at once (no Raft, no group), client and server in one process -- the
setting of the issue's reference figure for a bare purerpc unary call (~900 calls/s).

::

    python benchmarks/transport_micro.py [--seconds 2] [--concurrency 1,8,64]

Prints one JSON object: for each concurrency, calls/s, mean latency and the process's CPU %.
Each call carries one AppendEntries request with one 100-byte entry, so the figure is the
per-message cost that every Raft message (heartbeats included) pays today.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import trio

from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc import GrpcTransport


class _Echo:
    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        m = request.message
        reply = Message(MsgType.APPEND_ENTRIES_RESPONSE, m.term, m.dest, m.src,
                        accepted=True, next_index=m.last_log_index + len(m.entries) + 1)
        return GroupEnvelope(request.group_id, "", "", reply)


async def measure(seconds: float, concurrencies: list[int]) -> dict[str, object]:
    server_uuid, client_uuid, group = (str(uuid.uuid4()) for _ in range(3))
    directory: dict[str, str] = {}
    server = GrpcTransport(server_uuid=server_uuid, host="127.0.0.1", port=0,
                           lookup_peer=lambda k: directory.get(k, ""))
    client = GrpcTransport(server_uuid=client_uuid, lookup_peer=lambda k: directory.get(k, ""))
    env = GroupEnvelope(group, "bench", server_uuid, Message(
        MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2,
        entries=(LogEntry(1, LogType.APP, b"x" * 100),)))
    results: list[dict[str, float]] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, _Echo())
        directory[server_uuid] = f"127.0.0.1:{port}"
        async with client:
            await client.call(server_uuid, env, timeout=5)  # connect
            for conc in concurrencies:
                calls = 0
                end = trio.current_time() + seconds

                async def worker(end: float) -> None:
                    nonlocal calls
                    while trio.current_time() < end:
                        await client.call(server_uuid, env, timeout=5)
                        calls += 1

                cpu0, t0 = time.process_time(), time.perf_counter()
                async with trio.open_nursery() as workers:
                    for _ in range(conc):
                        workers.start_soon(worker, end)
                wall = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                results.append({"concurrency": conc, "calls_per_s": round(calls / wall, 1),
                                "mean_ms": round(wall / calls * conc * 1000, 2),
                                "cpu_pct": round(cpu / wall * 100, 1),
                                "cpu_us_per_call": round(cpu / calls * 1e6, 1)})
        nursery.cancel_scope.cancel()
    return {"results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1,8,64")
    args = parser.parse_args()
    conc = [int(x) for x in args.concurrency.split(",")]
    print(json.dumps(trio.run(measure, args.seconds, conc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
