"""A delaying TCP proxy per directed link (the delay fault where ``tc netem`` is missing).

Each chunk read from one side is written to the other no earlier than ``delay + jitter`` after
it arrived (jitter uniform in ``[-jitter, +jitter]``), and never before the chunk ahead of it
(a byte stream keeps its order).  :meth:`DelayProxy.cut` drops every proxied connection
abruptly, which is how the fault heals: the nodes reconnect directly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import trio

__all__ = ["DelayProxy"]


@dataclass
class DelayProxy:
    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    rng: random.Random
    delay: float = 0.0
    jitter: float = 0.0
    _scopes: set[trio.CancelScope] = field(default_factory=set)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(self.listen_port, host=self.listen_host)
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with client:
                    try:
                        server = await trio.open_tcp_stream(self.target_host, self.target_port)
                    except OSError:
                        return
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
            finally:
                self._scopes.discard(scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream,
                    done: trio.CancelScope) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

        async def deliver() -> None:
            async for at, data in receive:
                await trio.sleep_until(at)
                await dst.send_all(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver)
                last = 0.0
                while True:
                    data = await src.receive_some(65536)
                    if not data:
                        break
                    at = trio.current_time() + max(
                        0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
                    last = max(last, at)
                    send.send_nowait((last, data))
                send.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        done.cancel()
