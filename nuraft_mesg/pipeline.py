"""Many writes in flight from one task: :class:`WritePipeline` (``Manager.pipeline``).

``Manager.append_entries`` costs one task (and one wake-up) per outstanding write; a
pipeline submits writes with :meth:`Manager.submit` and has them completed by callbacks in
the group's task, so one task keeps ``window`` writes in flight and wakes only when the
window was full and room freed (once per apply batch, not once per write).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from nuraft_mesg.errors import RaftError

__all__ = ["OnDone", "Submitter", "WritePipeline"]

OnDone = Callable[[list[bytes] | RaftError], None]


class Submitter(Protocol):
    def submit(self, group_id: str, entries: Sequence[bytes], on_done: OnDone) -> None: ...


class WritePipeline:
    """Writes to one group with at most ``window`` outstanding.

    A write's outcome goes to its ``on_done`` when given (called in the group's task: it
    must not block); a failed write without one is raised, as its RaftError, from the next
    :meth:`append` or :meth:`drain` (the first such error; later ones are only counted).
    """

    __slots__ = ("_error", "_idle", "_manager", "_room", "completed", "failed",
                 "group_id", "submitted", "window")

    def __init__(self, manager: Submitter, group_id: str, window: int = 1024) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._manager = manager
        self.group_id = group_id
        self.window = window
        self.submitted = 0
        self.completed = 0
        """Writes finished, successfully or not (``failed`` counts the latter)."""
        self.failed = 0
        self._error: RaftError | None = None
        self._room: trio.Event | None = None
        """Set when the window has room again (only while append waits for it)."""
        self._idle: trio.Event | None = None
        """Set when nothing is outstanding (only while drain waits)."""

    @property
    def outstanding(self) -> int:
        return self.submitted - self.completed

    async def append(self, entries: Sequence[bytes], on_done: OnDone | None = None) -> None:
        """Submit ``entries`` as one write; returns once it is queued (waits only while
        ``window`` writes are outstanding).

        Raises:
            RaftError: an earlier write without ``on_done`` failed; Busy/NotLeader/... from
                :meth:`Manager.submit` when this write could not be submitted.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._raise_pending()
        while self.submitted - self.completed >= self.window:
            room = self._room = trio.Event()
            await room.wait()
            self._raise_pending()

        def done(result: list[bytes] | RaftError) -> None:
            self.completed += 1
            if isinstance(result, RaftError):
                self.failed += 1
                if on_done is None and self._error is None:
                    self._error = result
            if on_done is not None:
                on_done(result)
            self._wake()

        self.submitted += 1
        try:
            self._manager.submit(self.group_id, entries, done)
        except BaseException:
            self.submitted -= 1  # nothing was queued: done will never be called
            raise

    async def drain(self) -> None:
        """Wait until every submitted write finished; raise the first unhandled failure."""
        while self.submitted != self.completed:
            idle = self._idle = trio.Event()
            await idle.wait()
        await trio.lowlevel.checkpoint()
        self._raise_pending()

    def _wake(self) -> None:
        room = self._room
        if room is not None and self.submitted - self.completed < self.window:
            self._room = None
            room.set()
        idle = self._idle
        if idle is not None and self.submitted == self.completed:
            self._idle = None
            idle.set()

    def _raise_pending(self) -> None:
        error = self._error
        if error is not None:
            self._error = None
            raise error
