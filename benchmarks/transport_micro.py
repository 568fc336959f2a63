#!/usr/bin/env python3
"""Transport micro-benchmark: RaftStep round trips through nuraft_mesg's GrpcTransport with a
handler that answers at once (no Raft, no group), client and server in one process -- the
setting of the issue's reference figure for a bare purerpc unary call (~900 calls/s).

::

    python benchmarks/transport_micro.py [--seconds 2] [--concurrency 1,8,64]
                                         [--modes unary,stream] [--batch 1,16,256] [--depth 4]

Prints one JSON object:

* ``results`` (mode ``unary``): for each concurrency, one unary ``RaftStep`` per message:
  calls/s, mean latency and the process's CPU %;
* ``stream`` (mode ``stream``): ``send_batch`` over the per-peer ``RaftStream``, for each
  batch size (requests per ``send_batch``, i.e. per frame) with up to ``depth`` batches in
  flight: messages/s, mean latency of a batch and CPU per message.  The handler answers
  through ``step_nowait`` (no task per request), as the Manager does.

Each message is one AppendEntries request with one 100-byte entry, so the figure is the
per-message cost that every Raft message (heartbeats included) pays.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import trio

from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport.base import StepReply, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc import GrpcTransport


class _Echo:
    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        return self._reply(request)

    def step_nowait(self, request: GroupEnvelope, respond: StepReply) -> bool:
        respond(self._reply(request))
        return True

    @staticmethod
    def _reply(request: GroupEnvelope) -> GroupEnvelope:
        m = request.message
        reply = Message(MsgType.APPEND_ENTRIES_RESPONSE, m.term, m.dest, m.src,
                        accepted=True, next_index=m.last_log_index + len(m.entries) + 1)
        return GroupEnvelope(request.group_id, "", "", reply)


async def _unary(client: GrpcTransport, peer: str, env: GroupEnvelope, seconds: float,
                 conc: int) -> dict[str, float]:
    calls = 0
    end = trio.current_time() + seconds

    async def worker() -> None:
        nonlocal calls
        while trio.current_time() < end:
            await client.call(peer, env, timeout=5)
            calls += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as workers:
        for _ in range(conc):
            workers.start_soon(worker)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {"concurrency": conc, "calls_per_s": round(calls / wall, 1),
            "mean_ms": round(wall / calls * conc * 1000, 2),
            "cpu_pct": round(cpu / wall * 100, 1),
            "cpu_us_per_call": round(cpu / calls * 1e6, 1)}


async def _stream(client: GrpcTransport, peer: str, env: GroupEnvelope, seconds: float,
                  batch: int, depth: int) -> dict[str, float]:
    sent = answered = failed = 0
    wake = trio.Event()

    def on_reply(result: GroupEnvelope | TransportError) -> None:
        nonlocal answered, failed
        answered += 1
        failed += isinstance(result, TransportError)
        wake.set()

    items = [(env, on_reply)] * batch
    window = depth * batch
    end = trio.current_time() + seconds
    cpu0, t0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        while trio.current_time() < end:
            if sent - answered < window:
                await client.send_batch(peer, items, timeout=5, nursery=nursery)
                sent += batch
            else:
                wake = trio.Event()
                await wake.wait()
        while answered < sent:
            wake = trio.Event()
            await wake.wait()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if failed:
        raise RuntimeError(f"{failed} of {answered} stream requests failed")
    return {"batch": batch, "depth": depth, "msgs_per_s": round(answered / wall, 1),
            "mean_batch_ms": round(wall / (answered / batch) * depth * 1000, 2),
            "cpu_pct": round(cpu / wall * 100, 1),
            "cpu_us_per_msg": round(cpu / answered * 1e6, 2)}


async def measure(seconds: float, concurrencies: list[int], modes: list[str] | None = None,
                  batches: list[int] | None = None, depth: int = 4) -> dict[str, object]:
    modes = modes if modes is not None else ["unary"]
    server_uuid, client_uuid, group = (str(uuid.uuid4()) for _ in range(3))
    directory: dict[str, str] = {}
    server = GrpcTransport(server_uuid=server_uuid, host="127.0.0.1", port=0,
                           lookup_peer=lambda k: directory.get(k, ""))
    client = GrpcTransport(server_uuid=client_uuid, lookup_peer=lambda k: directory.get(k, ""))
    env = GroupEnvelope(group, "bench", server_uuid, Message(
        MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2,
        entries=(LogEntry(1, LogType.APP, b"x" * 100),)))
    out: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, _Echo())
        directory[server_uuid] = f"127.0.0.1:{port}"
        async with client:
            await client.call(server_uuid, env, timeout=5)  # connect
            if "unary" in modes:
                out["results"] = [await _unary(client, server_uuid, env, seconds, conc)
                                  for conc in concurrencies]
            if "stream" in modes:
                out["stream"] = [await _stream(client, server_uuid, env, seconds, b, depth)
                                 for b in (batches or [1, 16, 256])]
        nursery.cancel_scope.cancel()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--modes", default="unary,stream")
    parser.add_argument("--batch", default="1,16,256")
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()
    conc = [int(x) for x in args.concurrency.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    batches = [int(x) for x in args.batch.split(",")]
    print(json.dumps(trio.run(measure, args.seconds, conc, modes, batches, args.depth)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
