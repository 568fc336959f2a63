"""One-shot results handed between tasks: :class:`Slot` (awaited) and :class:`Callback`
(a function called once).

Separate from :mod:`nuraft_mesg.group` because they are generic trio plumbing with no Raft
in them; the group's loop completes them and every caller of a group waits on one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

from nuraft_mesg.errors import RaftError

__all__ = ["Callback", "Slot"]

T = TypeVar("T")


class Slot(Generic[T]):
    """A one-shot result that one task sets and others await.

    Built on trio's low-level parking (the waiting tasks are rescheduled directly) rather
    than on :class:`trio.Event`: every local write waits on one, and the Event's parking
    lot and per-wait bookkeeping were a tenth of the leader's CPU on the write path.
    """

    __slots__ = ("_error", "_value", "_waiters", "done")

    def __init__(self) -> None:
        self.done = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self._waiters: list[trio.lowlevel.Task] | None = None

    def set(self, value: T) -> None:
        if not self.done:
            self._value = value
            self._finish()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self._error = error
            self._finish()

    def _finish(self) -> None:
        self.done = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            for task in waiters:
                trio.lowlevel.reschedule(task)

    async def wait(self) -> T:
        if self.done:
            await trio.lowlevel.checkpoint()
        else:
            task = trio.lowlevel.current_task()
            waiters = self._waiters
            if waiters is None:
                waiters = self._waiters = []
            waiters.append(task)

            def abort(_: object) -> trio.lowlevel.Abort:
                if self._waiters is not None:
                    self._waiters.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Callback(Generic[T]):
    """A one-shot result handed to a function instead of awaited: requests taken by the
    transport's fast path (``Manager.step_nowait``) have no task waiting for their answer.
    ``fn`` is called once, in the group's task, with the value or the error; it must not
    block."""

    __slots__ = ("_fn", "done")

    def __init__(self, fn: Callable[[T | RaftError], None]) -> None:
        self._fn = fn
        self.done = False

    def set(self, value: T) -> None:
        if not self.done:
            self.done = True
            self._fn(value)

    def fail(self, error: RaftError) -> None:
        if not self.done:
            self.done = True
            self._fn(error)

