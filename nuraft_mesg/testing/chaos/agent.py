"""The test-mode agent inside each node process of the chaos rig (nothing else loads it).

The rig starts its nodes as ``python -m nuraft_mesg server ...`` with ``PYTHONPATH`` starting
with ``chaos/_site`` and ``NURAFT_CHAOS_CONTROL=<dir>``; that folder's ``sitecustomize``
calls :func:`install`, which

* runs trio with :class:`JumpClock`, trio's clock plus an offset: every timer of the node
  (heartbeats, election timeouts, leases, client deadlines) reads it, so a *clock jump* of the
  node is the offset growing at once (``<dir>/clock`` holds the offset in seconds).  Only
  forward jumps: trio's clock is monotonic, as the library assumes;
* serves *commands* dropped into ``<dir>`` as files ``cmd-<n>`` (one line: ``leave <group>``):
  the agent runs ``Manager.leave_group`` and renames the file to ``cmd-<n>.done`` (with the
  outcome).  That is how the rig stops the group of a quiet group's leader while its node
  stays up.

No runtime module of the library is changed: the agent wraps ``trio.run`` and records each
``Manager`` in its ``__aenter__``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from nuraft_mesg.manager import Manager

__all__ = ["JumpClock", "install"]

_managers: list[Manager] = []


class JumpClock(trio.abc.Clock):
    """trio's default clock plus :attr:`offset` (seconds, only ever growing)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.perf_counter() + self.offset

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - self.current_time()


async def _serve(control: Path, clock: JumpClock) -> None:
    while True:
        clock_file = control / "clock"
        try:
            offset = float(clock_file.read_text() or 0)
        except (OSError, ValueError):
            offset = 0.0
        if offset > clock.offset:
            clock.offset = offset
        for cmd in sorted(control.glob("cmd-*")):  # noqa: ASYNC240 - a tiny local folder
            if cmd.suffix == ".done":
                continue
            words = cmd.read_text().split()
            outcome = "unknown command"
            if len(words) == 2 and words[0] == "leave" and _managers:
                try:
                    await _managers[-1].leave_group(words[1])
                    outcome = "ok"
                except Exception as exc:  # reported to the rig, which judges it
                    outcome = f"error {exc!r}"
            cmd.rename(cmd.with_name(cmd.name + ".done"))
            cmd.with_name(cmd.name + ".done").write_text(outcome)
        await trio.sleep(0.05)


def install(control_dir: str) -> None:
    control = Path(control_dir)
    real_run = trio.run
    real_aenter = Manager.__aenter__

    async def aenter(self: Manager) -> Manager:
        mgr = await real_aenter(self)
        _managers.append(mgr)
        return mgr

    def run(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        clock = JumpClock()

        async def main() -> Any:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_serve, control, clock)
                try:
                    return await fn(*args)
                finally:
                    nursery.cancel_scope.cancel()

        kwargs.setdefault("clock", clock)
        return real_run(main, **kwargs)

    Manager.__aenter__ = aenter  # type: ignore[method-assign]
    trio.run = run  # type: ignore[assignment]
