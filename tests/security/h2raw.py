"""A raw HTTP/2 client (the ``h2`` library over a trio socket) for hostile-input tests:
arbitrary headers, arbitrary DATA bytes, requests without a body, compressed messages."""

from __future__ import annotations

import struct
import urllib.parse
from dataclasses import dataclass, field

import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import h2.events  # type: ignore[import-untyped]
import trio

__all__ = ["H2Client", "H2Reply", "grpc_frame", "request_headers"]


def grpc_frame(message: bytes, *, compressed: bool | int = False,
               length: int | None = None) -> bytes:
    """gRPC's length-prefixed message (``length`` may lie)."""
    flag = int(compressed)
    return struct.pack(">BI", flag, len(message) if length is None else length) + message


def request_headers(path: str = "/nuraft_mesg.Messaging/RaftStep",
                    extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("te", "trailers"),
        ("content-type", "application/grpc+proto"),
        *(extra or []),
    ]


@dataclass
class H2Reply:
    status: int | None = None
    """grpc-status (None: the stream ended without one)."""
    message: str = ""
    data: bytes = b""
    reset: int | None = None
    """RST_STREAM error code, if the server reset the stream."""
    headers: dict[str, str] = field(default_factory=dict)


class H2Client:
    """One HTTP/2 connection to ``port`` on loopback."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 30)
        self.replies: dict[int, H2Reply] = {}
        self.ended: set[int] = set()
        self.closed = False

    @classmethod
    async def connect(cls, port: int) -> H2Client:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def send(self, headers: list[tuple[str, str]], body: bytes | None,
                   *, end: bool = True) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.replies[sid] = H2Reply()
        self.conn.send_headers(sid, headers, end_stream=body is None and end)
        if body is not None:
            # respect the server's window: send what fits, in frames it accepts
            view = memoryview(body)
            while view:
                window = min(self.conn.local_flow_control_window(sid),
                             self.conn.max_outbound_frame_size)
                if window <= 0:
                    await self.flush()
                    await self._read_once()
                    if sid in self.ended or self.closed:
                        return sid
                    continue
                chunk, view = view[:window], view[window:]
                self.conn.send_data(sid, bytes(chunk), end_stream=end and not view)
            if not body and end:
                self.conn.end_stream(sid)
        await self.flush()
        return sid

    async def reply(self, sid: int, timeout: float = 5.0) -> H2Reply:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            while sid not in self.ended and not self.closed:
                await self._read_once()
        return self.replies[sid]

    async def _read_once(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            sid = getattr(event, "stream_id", 0)
            reply = self.replies.get(sid)
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                assert reply is not None
                headers = dict(event.headers)
                reply.headers.update(headers)
                if "grpc-status" in headers:
                    reply.status = int(headers["grpc-status"])
                    reply.message = urllib.parse.unquote(headers.get("grpc-message", ""))
            elif isinstance(event, h2.events.DataReceived):
                if reply is not None:
                    reply.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(sid)
            elif isinstance(event, h2.events.StreamReset):
                if reply is not None:
                    reply.reset = int(event.error_code)
                self.ended.add(sid)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
        await self.flush()

    async def aclose(self) -> None:
        await self.stream.aclose()
