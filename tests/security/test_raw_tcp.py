"""Hostile connections: garbage on the raw TCP port, mutated HTTP/2 byte streams, half-open
connections, a client that sends one byte per second (before and after its preface), a TLS
handshake that stalls.  In every case the server answers with a gRPC status or drops the
connection within its time limits (``handshake_timeout``, ``request_read_timeout``, both 1 s
here), keeps serving real traffic meanwhile, leaks no socket, and the groups keep their
invariants and commit."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import AsyncIterator

import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import pytest
import trio

from nuraft_mesg.manager import ManagerConfig
from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.transport.base import Status
from nuraft_mesg.transport.codec import encode_group_msg

from . import Certs, LiveCluster, count_input
from .conftest import budget
from .h2raw import H2Client, H2Reply, grpc_frame, request_headers
from .test_fuzz import mutate

LIMIT = 1.0
"""handshake_timeout and request_read_timeout of the nodes under attack."""


def fast_limits(i: int, config: ManagerConfig) -> ManagerConfig:
    return dataclasses.replace(config, handshake_timeout=LIMIT, request_read_timeout=LIMIT)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def assert_no_socket_leak(baseline: int) -> None:
    """The server closes its side of dropped connections (give it a moment to see EOF)."""
    for _ in range(30):
        if open_fds() <= baseline + 2:
            return
        await trio.sleep(0.1)
    assert open_fds() <= baseline + 2, (open_fds(), baseline)


@pytest.fixture
async def cluster(caplog: pytest.LogCaptureFixture) -> AsyncIterator[tuple[LiveCluster, str]]:
    caplog.set_level(logging.WARNING, logger="nuraft_mesg")
    async with LiveCluster.open(3, fast_limits) as cluster:
        gid = await cluster.create_group()
        await cluster.commit(gid, b"set a 1")
        # Once idle, the group goes quiet and its followers ping the leader's node over
        # channels of their own: open every channel now, so that the tests' socket
        # baselines include them.
        for a in cluster.nodes:
            for b in cluster.nodes:
                if a is not b:
                    await a.mgr.transport.ping(b.uuid, timeout=5)
        yield cluster, gid


def port_of(cluster: LiveCluster) -> int:
    return cluster.nodes[0].mgr.port


async def read_until_closed(stream: trio.SocketStream, within: float) -> tuple[bool, bytes]:
    """Read until EOF; (closed in time, bytes read)."""
    data = b""
    with trio.move_on_after(within):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return True, data
            if not chunk:
                return True, data
            data += chunk
    return False, data


async def still_serving(cluster: LiveCluster, gid: str, caplog: pytest.LogCaptureFixture,
                        tag: bytes) -> None:
    await cluster.commit(gid, b"set alive " + tag)
    cluster.check()
    crashed = [r.getMessage() for r in caplog.records
               if r.exc_info is not None and r.name.startswith("nuraft_mesg")]
    assert not crashed, crashed[:5]


def valid_stream(node_uuid: str, gid: str, server_id: int) -> bytes:
    """The bytes a client sends for one RaftStep (preface, settings, headers, data)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    body = encode_group_msg(gid, "", node_uuid,
                            Message(MsgType.PING_REQUEST, 0, 4242, server_id))
    conn.send_headers(1, request_headers())
    conn.send_data(1, grpc_frame(body), end_stream=True)
    return bytes(conn.data_to_send())


GARBAGE = {
    "http1": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls-hello": bytes.fromhex("16030100f8010000f40303") + b"\x00" * 240,
    "zeros": b"\x00" * 4096,
    "ones": b"\xff" * 4096,
    "bad-preface": b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\x00" * 9,
    "preface-then-garbage": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xde\xad\xbe\xef" * 64,
    "huge-frame": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff\xff\xff\x00\x00\x00\x00\x00\x00",
    "settings-flood": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                      + b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00" * 500,
}


async def test_garbage_on_the_raw_port(cluster: tuple[LiveCluster, str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    live, gid = cluster
    port = port_of(live)
    rng = random.Random(0x6A4B)
    inputs = list(GARBAGE.values()) + [rng.randbytes(rng.randrange(1, 2048))
                                       for _ in range(budget(60))]
    baseline = open_fds()
    limiter = trio.CapacityLimiter(64)  # more at once would overflow the listen backlog

    async def one(data: bytes) -> None:
        async with limiter:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                with trio.move_on_after(1):
                    await stream.send_all(data)
                closed, _ = await read_until_closed(stream, LIMIT + 3)
                assert closed, data[:64]
            finally:
                await stream.aclose()
        count_input("raw-tcp")

    async with trio.open_nursery() as nursery:
        for data in inputs:
            nursery.start_soon(one, data)
    await still_serving(live, gid, caplog, b"garbage")
    await assert_no_socket_leak(baseline)


async def test_mutated_http2_streams(cluster: tuple[LiveCluster, str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    """Byte-level mutations of a real client's HTTP/2 stream, each on its own connection."""
    live, gid = cluster
    node = live.nodes[0]
    port = port_of(live)
    seed = valid_stream(node.uuid, gid, node.server_id)
    rng = random.Random(0x42)
    limiter = trio.CapacityLimiter(64)
    outcomes: dict[str, int] = {}

    async def one(data: bytes) -> None:
        async with limiter:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await stream.send_all(data)
                # dropped, or answered and then idle: either way within the limits
                closed, _ = await read_until_closed(stream, LIMIT + 1.5)
                outcome = "closed" if closed else "open"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            finally:
                await stream.aclose()
            count_input("http2-mutated")

    async with trio.open_nursery() as nursery:
        for _ in range(budget(150)):
            nursery.start_soon(one, mutate(rng, seed, [seed]))
    assert outcomes.get("closed", 0) > 0, outcomes
    await still_serving(live, gid, caplog, b"mutated-h2")


async def test_half_open_and_one_byte_per_second(cluster: tuple[LiveCluster, str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Silent connections and a preface sent one byte per second are dropped after
    handshake_timeout, while the node keeps serving."""
    live, gid = cluster
    port = port_of(live)
    baseline = open_fds()
    dropped: list[float] = []

    async def silent() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        closed, _ = await read_until_closed(stream, LIMIT + 3)
        assert closed
        dropped.append(trio.current_time() - start)
        await stream.aclose()
        count_input("half-open")

    async def one_byte_per_second() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        try:
            for byte in preface:
                await stream.send_all(bytes([byte]))
                await trio.sleep(1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # dropped while trickling
        closed, _ = await read_until_closed(stream, LIMIT + 3)
        assert closed
        assert trio.current_time() - start < LIMIT + 4
        await stream.aclose()
        count_input("slow-client")

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(silent)
        nursery.start_soon(one_byte_per_second)
        for k in range(5):  # real traffic goes on meanwhile
            await live.commit(gid, b"set during %d" % k)
    assert len(dropped) == 20 and all(LIMIT - 0.1 <= t <= LIMIT + 2 for t in dropped), dropped
    await still_serving(live, gid, caplog, b"half-open")
    await assert_no_socket_leak(baseline)


async def test_request_body_one_byte_at_a_time(cluster: tuple[LiveCluster, str]) -> None:
    """After a valid preface and headers, a body trickling in gets DEADLINE_EXCEEDED once
    request_read_timeout has passed; the connection serves the next request."""
    live, gid = cluster
    node = live.nodes[0]
    client = await H2Client.connect(port_of(live))
    try:
        body = grpc_frame(encode_group_msg(gid, "", node.uuid,
                                           Message(MsgType.PING_REQUEST, 0, 4242,
                                                   node.server_id)))
        sid = client.conn.get_next_available_stream_id()
        client.replies[sid] = H2Reply()
        client.conn.send_headers(sid, request_headers())
        await client.flush()
        for byte in body[:3]:
            client.conn.send_data(sid, bytes([byte]))
            await client.flush()
            await trio.sleep(0.4)
        reply = await client.reply(sid, timeout=LIMIT + 2)
        assert reply.status == Status.DEADLINE_EXCEEDED, reply
        count_input("slow-body")
        sid = await client.send(request_headers(), body)
        assert (await client.reply(sid)).status == Status.OK
    finally:
        await client.aclose()


async def test_stalled_tls_handshake_is_dropped(certs: Certs) -> None:
    def tls(i: int, config: ManagerConfig) -> ManagerConfig:
        return dataclasses.replace(fast_limits(i, config), ssl_cert=certs.node_cert,
                                   ssl_key=certs.node_key, ssl_ca=certs.ca)

    async with LiveCluster.open(1, tls) as live:
        port = port_of(live)

        async def stall(data: bytes) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            start = trio.current_time()
            await stream.send_all(data)
            closed, _ = await read_until_closed(stream, LIMIT + 3)
            assert closed and trio.current_time() - start < LIMIT + 2
            await stream.aclose()
            count_input("tls-stall")

        async with trio.open_nursery() as nursery:
            for data in (b"", bytes.fromhex("160301"), GARBAGE["tls-hello"][:40]):
                nursery.start_soon(stall, data)
        gid = await live.create_group()
        await live.commit(gid, b"set tls 1")
