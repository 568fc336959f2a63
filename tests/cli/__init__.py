"""Tests that run real processes: the command line and the echo example.

Synchronisation with the children is by reading their output lines (or polling a status
RPC), each wait bounded by a deadline; never by sleeping.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PYTHON = sys.executable


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A running process whose stdout and stderr lines are collected as they come."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.closed = False

    async def pump(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        buffer = b""
        try:
            async for chunk in stream:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                self.lines.extend(line.decode(errors="replace") for line in complete)
                self._notify()
        finally:
            if buffer:
                self.lines.append(buffer.decode(errors="replace"))
            self.closed = True
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def find(self, pattern: str) -> re.Match[str] | None:
        regex = re.compile(pattern)
        for line in self.lines:
            match = regex.search(line)
            if match:
                return match
        return None

    async def wait_line(self, pattern: str) -> re.Match[str]:
        """The first line matching ``pattern`` (bound the wait with a deadline)."""
        while True:
            match = self.find(pattern)
            if match:
                return match
            if self.closed:
                raise AssertionError(
                    f"{self.name} exited without printing {pattern!r}:\n" + self.output
                )
            await self._changed.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def stop(self) -> int:
        """SIGTERM, then wait (SIGKILL after 10 s)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()


class Children:
    """Child processes started in one scope (see :func:`children`)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.started: list[Child] = []

    async def spawn(self, name: str, *argv: str) -> Child:
        process = await trio.lowlevel.open_process(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(),
            cwd=ROOT,
        )
        child = Child(name, process)
        self.started.append(child)
        self._nursery.start_soon(child.pump)
        return child


@contextlib.asynccontextmanager
async def children() -> AsyncIterator[Children]:
    """A scope for child processes: every one still running at the end is stopped."""
    async with trio.open_nursery() as nursery:
        kids = Children(nursery)
        try:
            yield kids
        finally:
            with trio.CancelScope(shield=True):
                for child in kids.started:
                    await child.stop()


async def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run a short-lived command to completion (at most 30 s); output captured."""
    with trio.fail_after(30):
        return await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False,
            env=child_env(), cwd=ROOT,
        )
