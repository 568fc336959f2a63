"""Helpers shared by the transport tests: envelopes, a peer directory, handlers, servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc import DEFAULT_MAX_MESSAGE_SIZE, GrpcTransport

LOCALHOST = "127.0.0.1"


def new_uuid() -> str:
    return str(uuid.uuid4())


def make_request(group_id: str, peer: str, *, term: int = 1, payload: bytes = b"") -> GroupEnvelope:
    """An append_entries request for ``peer`` (server ids 1 -> 2)."""
    entries = (LogEntry(term, LogType.APP, payload),) if payload else ()
    msg = Message(MsgType.APPEND_ENTRIES_REQUEST, term, 1, 2, commit_index=7, entries=entries)
    return GroupEnvelope(group_id, "test-type", peer, msg)


def make_reply(request: GroupEnvelope, *, dest_addr: str = "") -> GroupEnvelope:
    """The reply our fake handlers give: accepted unless ``dest_addr`` (a redirect) is set."""
    msg = Message(
        MsgType.APPEND_ENTRIES_RESPONSE,
        request.message.term,
        request.message.dest,
        request.message.src,
        next_index=len(request.message.entries) + 1,
        accepted=not dest_addr,
        context=b"ctx",
    )
    return GroupEnvelope(request.group_id, "", "", msg, dest_addr)


@dataclass
class Directory:
    """``lookup_peer`` backed by a dict; records every lookup."""

    addresses: dict[str, str] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)

    def __call__(self, peer: str) -> str:
        self.lookups.append(peer)
        return self.addresses.get(peer, "")


StepFn = Callable[[GroupEnvelope], Awaitable[GroupEnvelope]]


async def echo(request: GroupEnvelope) -> GroupEnvelope:
    return make_reply(request)


class FakeHandler:
    """A StepHandler that records requests and delegates to ``step`` (replaceable)."""

    def __init__(self, step: StepFn = echo) -> None:
        self.step = step
        self.requests: list[GroupEnvelope] = []

    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        self.requests.append(request)
        return await self.step(request)


@dataclass
class Node:
    uuid: str
    transport: GrpcTransport
    handler: FakeHandler
    address: str
    scope: trio.CancelScope
    stopped: trio.Event

    async def stop(self) -> None:
        """Cancel this node's serve() and wait until it has returned."""
        self.scope.cancel()
        await self.stopped.wait()


@asynccontextmanager
async def cluster(
    count: int,
    directory: Directory | None = None,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> AsyncIterator[tuple[Directory, list[Node]]]:
    """``count`` serving transports on loopback, registered in ``directory``."""
    directory = directory if directory is not None else Directory()
    async with trio.open_nursery() as nursery:
        nodes = [
            await start_node(nursery, directory, max_message_size=max_message_size)
            for _ in range(count)
        ]
        yield directory, nodes
        nursery.cancel_scope.cancel()


async def start_node(
    nursery: trio.Nursery,
    directory: Directory,
    *,
    node_uuid: str | None = None,
    port: int = 0,
    handler: FakeHandler | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> Node:
    """Start one transport's serve() in ``nursery`` (in its own cancel scope)."""
    node_uuid = node_uuid or new_uuid()
    transport = GrpcTransport(
        server_uuid=node_uuid,
        host=LOCALHOST,
        port=port,
        lookup_peer=directory,
        max_message_size=max_message_size,
    )
    handler = handler or FakeHandler()
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        try:
            with scope:
                await transport.serve(handler, task_status=task_status)
        finally:
            stopped.set()

    bound: int = await nursery.start(run)
    address = f"{LOCALHOST}:{bound}"
    directory.addresses[node_uuid] = address
    return Node(node_uuid, transport, handler, address, scope, stopped)
