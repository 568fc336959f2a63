"""Record what clients saw, then check that it is linearizable.

A store is linearizable when every operation appears to take effect at one instant between
its invocation and its completion, in an order that a sequential model accepts.  Raft gives
this for writes and for reads that go through the log (or through ReadIndex); a read served
from a replica's local state machine may be stale.  Tests record a :class:`History` of what
their clients invoked and what came back, then :func:`check_kv` (or :func:`check` with
another :class:`Model`) searches for such an order.

Recording::

    h = History()
    op = h.invoke(client, "put", "k", "v1")     # before sending the request
    h.ok(op)                                    # it was acknowledged
    op = h.invoke(client, "get", "k")
    h.ok(op, "v1")                              # the value read; None: the key was not set
    h.fail(op)                                  # or: it definitely did not take effect
    h.info(op)                                  # or: unknown (timeout, crash, lost answer)

An operation whose outcome is unknown may have taken effect at any instant after its
invocation, or never: the checker treats it as completing at +infinity and may leave it out.
Invocations never completed count as unknown.  Failed operations, and reads that did not
complete, had no effect and are dropped.

**File format** (:meth:`History.dump`, :meth:`History.load`): JSON lines, one event per line,
in the order they were recorded::

    {"type": "invoke", "id": 7, "client": 3, "kind": "put", "key": "k", "value": "v1", "time": 12.5}
    {"type": "ok", "id": 7, "client": 3, "kind": "put", "key": "k", "value": null, "time": 12.75}

* ``type``: ``"invoke"``, ``"ok"``, ``"fail"`` or ``"info"``;
* ``id``: an integer naming the operation, unique among invocations; a completion refers to an
  earlier invocation and comes at most once per id;
* ``client``: int or string (only reported);
* ``kind``: ``"put"``, ``"get"`` or ``"del"`` for the KV model (a :class:`Model` of your own
  may use other kinds: their values are not checked here);
* ``key``: string;
* ``value``: on an invoke, the value a ``put`` writes (null for get and del); on an ``ok`` of a
  ``get``, the value read, null when the key was not set; null otherwise;
* ``time``: seconds as a float, from one monotonic clock for the whole history (a completion
  is not earlier than its invocation; equal times count as concurrent).

Completion lines may omit ``client``, ``kind`` and ``key`` (taken from the invocation); if
present they must match it.

**Checking** (:func:`check`): Wing & Gong's search with Lowe's just-in-time linearization, as
in Porcupine.  Entries (invocations and completions) are kept in time order in a linked list;
the search repeatedly linearizes the earliest invocation the model accepts, lifting it out of
the list, and backtracks when it reaches a completion whose operation is not linearized yet.
Each (set of linearized operations, model state) pair is explored once, which is what makes
long histories tractable.  Independent objects (keys, for the KV model) are checked
separately (P-compositionality: a history is linearizable iff each key's sub-history is).
A search budget (``timeout``, ``max_steps``) turns a search that would take too long into an
"unknown" answer instead of a hang.  For a violation the checker then shrinks the key's
history to a smaller one that still admits no order -- removing only operations whose removal
cannot make a non-linearizable history linearizable (reads; a write with the reads of its
value), so the smaller history is itself proof -- and explains it.

Other state machines plug in their own :class:`Model`: the initial state, a step function and
(optionally) how to split operations into independent objects.  States must be hashable and
equal exactly when they behave the same.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import json
import math
import random
import time as timelib
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar

__all__ = [
    "History",
    "HistoryEvent",
    "KVModel",
    "LinearizabilityResult",
    "Model",
    "Operation",
    "PartitionResult",
    "check",
    "check_kv",
    "simulated_history",
]

EventType = Literal["invoke", "ok", "fail", "info"]
Outcome = Literal["ok", "violation", "unknown"]
KINDS: Final = ("put", "get", "del")
_TYPES: Final = ("invoke", "ok", "fail", "info")

S = TypeVar("S", bound=Hashable)


# ==============================================================================================
# Recording
# ==============================================================================================
@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One line of a history (see the module doc for the fields)."""

    type: EventType
    id: int
    client: int | str
    kind: str
    key: str
    value: str | None
    time: float

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "id": self.id, "client": self.client,
                           "kind": self.kind, "key": self.key, "value": self.value,
                           "time": self.time})


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation as the checker sees it: what was asked, what came back, and when.

    ``output`` is the value a ``get`` read (None: not set).  ``ret`` is ``math.inf`` for an
    operation whose outcome is unknown (``status == "info"``).
    """

    id: int
    client: int | str
    kind: str
    key: str
    input: str | None
    output: str | None
    call: float
    ret: float
    status: Literal["ok", "info"]

    def __str__(self) -> str:
        if self.kind == "get":
            what = f"get {self.key!r} -> {_value(self.output)}"
        elif self.kind == "put":
            what = f"put {self.key!r} = {self.input!r}"
        else:
            what = f"{self.kind} {self.key!r}" + (
                f" {self.input!r}" if self.input is not None else "")
        end = "?" if self.status == "info" else f"{self.ret:.3f}"
        tail = "  (outcome unknown)" if self.status == "info" else ""
        return f"#{self.id} client {self.client}: {what}  [{self.call:.3f}, {end}]{tail}"


def _value(v: str | None) -> str:
    return "(not set)" if v is None else repr(v)


class History:
    """A recorder of client operations (see the module doc).  Not thread-safe: record from
    one thread (trio tasks are fine)."""

    __slots__ = ("_events", "_invokes", "_done", "_next_id")

    def __init__(self) -> None:
        self._events: list[HistoryEvent] = []
        self._invokes: dict[int, HistoryEvent] = {}
        self._done: set[int] = set()
        self._next_id = 0

    @property
    def events(self) -> tuple[HistoryEvent, ...]:
        return tuple(self._events)

    def __len__(self) -> int:
        """The number of operations invoked."""
        return len(self._invokes)

    def __iter__(self) -> Iterator[HistoryEvent]:
        return iter(self._events)

    # -- recording ---------------------------------------------------------------------------
    def invoke(self, client: int | str, kind: str, key: str, value: str | None = None, *,
               time: float | None = None) -> int:
        """Record that ``client`` sends an operation; returns its id for the completion.

        ``value`` is what a ``put`` writes (required for put, None for get and del).
        ``time`` defaults to ``time.monotonic()``; pass the simulated clock's time otherwise.
        """
        op_id = self._next_id
        self._add(HistoryEvent("invoke", op_id, client, kind, key, value,
                               timelib.monotonic() if time is None else time))
        return op_id

    def ok(self, op_id: int, value: str | None = None, *, time: float | None = None) -> None:
        """The operation completed: ``value`` is what a ``get`` read (None: not set)."""
        self._complete("ok", op_id, value, time)

    def fail(self, op_id: int, *, time: float | None = None) -> None:
        """The operation definitely did not take effect (refused before it was proposed,
        or replaced so it can never commit)."""
        self._complete("fail", op_id, None, time)

    def info(self, op_id: int, *, time: float | None = None) -> None:
        """The outcome is unknown (a timeout, a crash, a lost answer): it may take effect at
        any later instant, or never."""
        self._complete("info", op_id, None, time)

    def _complete(self, type_: EventType, op_id: int, value: str | None,
                  time: float | None) -> None:
        inv = self._invokes.get(op_id)
        if inv is None:
            raise ValueError(f"operation {op_id} was never invoked")
        self._add(HistoryEvent(type_, op_id, inv.client, inv.kind, inv.key, value,
                               timelib.monotonic() if time is None else time))

    def _add(self, ev: HistoryEvent) -> None:
        """Validate and append one event (shared by the recorder and :meth:`load`)."""
        if ev.type not in _TYPES:
            raise ValueError(f"event type {ev.type!r} is not one of {_TYPES}")
        if not isinstance(ev.time, int | float) or not math.isfinite(ev.time):
            raise ValueError(f"operation {ev.id}: time {ev.time!r} is not a finite number")
        if ev.value is not None and not isinstance(ev.value, str):
            raise ValueError(f"operation {ev.id}: value {ev.value!r} is not a string or null")
        if ev.type == "invoke":
            if ev.id in self._invokes:
                raise ValueError(f"operation {ev.id} invoked twice")
            if not isinstance(ev.kind, str) or not ev.kind:
                raise ValueError(f"operation {ev.id}: kind {ev.kind!r} is not a string")
            if not isinstance(ev.key, str):
                raise ValueError(f"operation {ev.id}: key {ev.key!r} is not a string")
            if ev.kind in KINDS and (ev.kind == "put") != (ev.value is not None):
                raise ValueError(f"operation {ev.id}: a put has a value; get and del have none")
            self._invokes[ev.id] = ev
            self._next_id = max(self._next_id, ev.id + 1)
        else:
            inv = self._invokes.get(ev.id)
            if inv is None:
                raise ValueError(f"operation {ev.id} completed but never invoked")
            if ev.id in self._done:
                raise ValueError(f"operation {ev.id} completed twice")
            if ev.time < inv.time:
                raise ValueError(f"operation {ev.id} completed at {ev.time} before its "
                                 f"invocation at {inv.time}")
            if ev.value is not None and (ev.type != "ok" or inv.kind in ("put", "del")):
                raise ValueError(f"operation {ev.id}: only a completed get (or an operation "
                                 "of your own kind) has a value")
            self._done.add(ev.id)
        self._events.append(ev)

    # -- files -------------------------------------------------------------------------------
    def dump(self, path: str | Path) -> None:
        """Write the history as JSON lines (the module doc's schema)."""
        with open(path, "w", encoding="utf-8") as f:
            for ev in self._events:
                f.write(ev.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Read a history written by :meth:`dump` (or by anything following the schema).

        Raises:
            ValueError: a malformed line (its number is in the message).
        """
        with open(path, encoding="utf-8") as f:
            return cls.from_lines(f)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> History:
        h = cls()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                h._add(h._parse(json.loads(line)))
            except KeyError as exc:
                raise ValueError(f"history line {n}: missing field {exc}") from None
            except (ValueError, TypeError) as exc:
                raise ValueError(f"history line {n}: {exc}") from None
        return h

    def _parse(self, raw: Any) -> HistoryEvent:
        if not isinstance(raw, dict):
            raise ValueError("an event is a JSON object")
        op_id = raw["id"]
        if not isinstance(op_id, int) or isinstance(op_id, bool):
            raise ValueError(f"id {op_id!r} is not an integer")
        type_ = raw["type"]
        inv = self._invokes.get(op_id) if type_ != "invoke" else None
        if type_ != "invoke" and inv is None:
            raise ValueError(f"operation {op_id} completed but never invoked")
        fields: dict[str, Any] = {}
        for name in ("client", "kind", "key"):
            if inv is not None:
                fields[name] = raw.get(name, getattr(inv, name))
                if fields[name] != getattr(inv, name):
                    raise ValueError(f"operation {op_id}: {name} {fields[name]!r} differs "
                                     f"from its invocation's {getattr(inv, name)!r}")
            else:
                fields[name] = raw[name]
        client = fields["client"]
        if not isinstance(client, int | str) or isinstance(client, bool):
            raise ValueError(f"client {client!r} is not an integer or a string")
        return HistoryEvent(type_, op_id, client, fields["kind"], fields["key"],
                            raw.get("value"), raw["time"])

    # -- for the checker ---------------------------------------------------------------------
    def operations(self) -> list[Operation]:
        """The operations that may have taken effect, by id: completed ones, and unknown ones
        (completing at +infinity).  Failed operations are left out."""
        ends: dict[int, HistoryEvent] = {ev.id: ev for ev in self._events if ev.type != "invoke"}
        ops = []
        for op_id, inv in sorted(self._invokes.items()):
            end = ends.get(op_id)
            if end is not None and end.type == "fail":
                continue
            if end is not None and end.type == "ok":
                ops.append(Operation(op_id, inv.client, inv.kind, inv.key, inv.value,
                                     end.value, inv.time, end.time, "ok"))
            else:
                ops.append(Operation(op_id, inv.client, inv.kind, inv.key, inv.value, None,
                                     inv.time, math.inf, "info"))
        return ops


# ==============================================================================================
# Models
# ==============================================================================================
class Model(abc.ABC, Generic[S]):
    """A sequential specification: what a correct single-copy object would answer.

    ``init`` and ``step`` are required.  States must be hashable and equal exactly when the
    object behaves the same from them on (the search remembers states it has explored).
    """

    @abc.abstractmethod
    def init(self) -> S:
        """The state before any operation."""

    @abc.abstractmethod
    def step(self, state: S, op: Operation) -> tuple[bool, S]:
        """``(legal, next state)``: whether ``op``, applied to ``state``, would have answered
        what ``op`` saw (``op.output``) -- an unknown-outcome op answered nothing, so only
        its effect matters."""

    def partition(self, ops: Sequence[Operation]) -> Mapping[str, list[Operation]]:
        """Split ``ops`` into independent objects, checked separately.  The default keeps
        one object, named ``""``."""
        return {"": list(ops)}

    def read_only(self, op: Operation) -> bool:
        """True for an operation that never changes the state: if its outcome is unknown it
        is dropped.  The default is False (nothing is dropped)."""
        return False

    def removal_group(self, op: Operation, ops: Sequence[Operation]) -> list[Operation] | None:
        """The operations to remove together with ``op`` when shrinking a violation, such
        that removing them from a linearizable history leaves it linearizable (so the
        shrunk history still proves the violation); None keeps ``op``.  The default removes
        read-only operations alone and keeps the rest."""
        return [op] if self.read_only(op) else None

    def describe(self, state: S) -> str:
        return repr(state)

    def explain(self, op: Operation, state: S, ops: Sequence[Operation]) -> str:
        """Why ``op`` cannot come next after reaching ``state``; shown with a violation."""
        return f"no order of the operations that may still take effect before it completes " \
               f"makes it legal (state then: {self.describe(state)})"


class KVModel(Model[str | None]):
    """:class:`~nuraft_mesg.storage.memory.KVStateMachine` as a sequential model, one object
    per key: ``put`` sets the value, ``del`` unsets it, ``get`` reads it (None when not set,
    which is not the empty string)."""

    def init(self) -> str | None:
        return None

    def step(self, state: str | None, op: Operation) -> tuple[bool, str | None]:
        kind = op.kind
        if kind == "put":
            return True, op.input
        if kind == "del":
            return True, None
        if kind == "get":
            return op.output == state, state
        raise ValueError(f"operation {op.id}: the KV model has no kind {kind!r}")

    def partition(self, ops: Sequence[Operation]) -> Mapping[str, list[Operation]]:
        by_key: dict[str, list[Operation]] = {}
        for op in ops:
            by_key.setdefault(op.key, []).append(op)
        return by_key

    def read_only(self, op: Operation) -> bool:
        return op.kind == "get"

    def removal_group(self, op: Operation, ops: Sequence[Operation]) -> list[Operation] | None:
        # A read alone; a write with every read of the value it leaves (in any linearization
        # those reads are the only ones that can observe it, so dropping them all keeps the
        # rest legal).
        if op.kind == "get":
            return [op]
        left = op.input if op.kind == "put" else None
        return [op, *(o for o in ops if o.kind == "get" and o.status == "ok"
                      and o.output == left)]

    def describe(self, state: str | None) -> str:
        return _value(state)

    def explain(self, op: Operation, state: str | None, ops: Sequence[Operation]) -> str:
        if op.kind != "get":
            return "every place left for it leads to an order already shown to fail"
        if op.output is not None and not any(
                o.kind == "put" and o.input == op.output for o in ops):
            return f"no put of this key ever wrote {op.output!r}"
        return f"the value then is {_value(state)}, and no operation that may still take " \
               f"effect before it completes makes it {_value(op.output)}"


# ==============================================================================================
# Results
# ==============================================================================================
@dataclass(frozen=True, slots=True)
class PartitionResult:
    """The verdict for one independent object (one key, for the KV model)."""

    key: str
    outcome: Outcome
    operations: int
    steps: int
    linearization: tuple[Operation, ...] = ()
    """``ok``: a legal order of the operations that took effect.  ``violation``: the longest
    legal order found of the witness's operations."""
    witness: tuple[Operation, ...] = ()
    """``violation``: a subset of this key's operations that alone admits no legal order
    (so the whole does not either), sorted by invocation."""
    blocked: Operation | None = None
    """``violation``: the operation that could not come after :attr:`linearization`."""
    explanation: str = ""

    def __str__(self) -> str:
        head = f"key {self.key!r}: {self.outcome} ({self.operations} operations, " \
               f"{self.steps} search steps)"
        if self.outcome != "violation":
            return head + (f": {self.explanation}" if self.explanation else "")
        lines = [head, f"  {len(self.witness)} operations that admit no legal order:"]
        lines += [f"    {op}" for op in self.witness]
        order = ", ".join(f"#{op.id}" for op in self.linearization) or "(none)"
        lines.append(f"  longest legal order found: {order}")
        lines.append(f"  {self.explanation}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    """The verdict for a history: ``ok`` only if every object's history is linearizable;
    ``unknown`` if none is violated but a search ran out of budget."""

    outcome: Outcome
    partitions: Mapping[str, PartitionResult]
    operations: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def violations(self) -> list[PartitionResult]:
        return [r for r in self.partitions.values() if r.outcome == "violation"]

    @property
    def unknown(self) -> list[PartitionResult]:
        return [r for r in self.partitions.values() if r.outcome == "unknown"]

    def __str__(self) -> str:
        head = f"linearizability: {self.outcome} ({self.operations} operations, " \
               f"{len(self.partitions)} keys, {self.seconds:.2f}s)"
        return "\n".join([head, *(str(r) for r in self.violations + self.unknown)])


# ==============================================================================================
# The search
# ==============================================================================================
@dataclass(slots=True)
class _Budget:
    deadline: float
    max_steps: int | None
    exhausted: bool = False


@dataclass(slots=True)
class _Search:
    outcome: Outcome
    steps: int
    order: list[int] = field(default_factory=list)
    """ok: a linearization; violation: the longest partial one (indices into ops)."""
    blocked: int = -1
    state: object = None


_CHECK_EVERY: Final = 2048
_MEMO_BYTES: Final = 1 << 30
"""Rough bound on the memory of one search's explored set (a set of bits per operation
each): past it the search answers unknown rather than exhausting the machine."""


def _search(ops: Sequence[Operation], model: Model[S], budget: _Budget) -> _Search:
    """Lowe's just-in-time linearization over a linked list of call/return entries."""
    n = len(ops)
    # Entries 0..n-1 are calls, n..2n-1 returns; head = 2n, tail = 2n + 1.  At equal times
    # calls sort first, so operations that touch are concurrent (never a false violation).
    order = sorted(range(2 * n), key=lambda e: (ops[e].call, 0, e) if e < n
                   else (ops[e - n].ret, 1, e))
    head, tail = 2 * n, 2 * n + 1
    nxt = [0] * (2 * n + 2)
    prv = [0] * (2 * n + 2)
    chain = [head, *order, tail]
    for a, b in itertools.pairwise(chain):
        nxt[a] = b
        prv[b] = a
    inf = math.inf
    step = model.step
    read_only = [model.read_only(op) for op in ops]
    has_reads = any(read_only)
    state: S = model.init()
    linearized = 0
    seen: set[tuple[int, S]] = set()
    stack: list[tuple[int, S, bool]] = []  # (call linearized, state before, forced)
    best: list[int] = []
    best_blocked = -1
    best_state: object = state
    steps = 0
    memo_limit = max(10_000, _MEMO_BYTES // (n // 8 + 120))
    e = nxt[head]
    while True:
        if e == tail:
            return _Search("ok", steps, [c for c, _, _ in stack])
        steps += 1
        if steps % _CHECK_EVERY == 0 and (
                (budget.max_steps is not None and steps >= budget.max_steps)
                or len(seen) > memo_limit or timelib.monotonic() > budget.deadline):
            budget.exhausted = True
            return _Search("unknown", steps)
        if e < n:  # a call: try to linearize it now
            legal, new = step(state, ops[e])
            if legal:
                bits = linearized | (1 << e)
                memo = (bits, new)
                if memo not in seen:
                    seen.add(memo)
                    # A read-only op that is legal now can move to the front of any order
                    # that completes from here (it changes no state on the way), so placing
                    # it now is no choice: backtracking will not try the orders without it.
                    stack.append((e, state, read_only[e]))
                    state, linearized = new, bits
                    r = e + n  # lift the call and its return out of the list
                    nxt[prv[e]] = nxt[e]
                    prv[nxt[e]] = prv[e]
                    nxt[prv[r]] = nxt[r]
                    prv[nxt[r]] = prv[r]
                    e = nxt[head]
                    if has_reads:
                        e = _free_read(e, n, nxt, ops, read_only, step, state, linearized,
                                       seen)
                    continue
            e = nxt[e]
            continue
        # A return whose operation is not linearized yet.
        if ops[e - n].ret == inf:  # only unknown-outcome ops remain: leave them out
            return _Search("ok", steps, [c for c, _, _ in stack])
        if len(stack) > len(best) or best_blocked < 0:
            best = [c for c, _, _ in stack]
            best_blocked, best_state = e - n, state
        while True:
            if not stack:
                return _Search("violation", steps, best, best_blocked, best_state)
            c, state, forced = stack.pop()
            linearized &= ~(1 << c)
            r = c + n  # put the return, then the call, back where they were
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            nxt[prv[c]] = c
            prv[nxt[c]] = c
            if not forced:
                break
        e = nxt[c]


def _free_read(head_next: int, n: int, nxt: list[int], ops: Sequence[Operation],
               read_only: list[bool], step: Any, state: Any, linearized: int,
               seen: set[tuple[int, Any]]) -> int:
    """The first pending read-only call that is legal now and leads somewhere unexplored
    (placing it is no choice, see above), else ``head_next``: trying those before any write
    keeps the search from branching on writes that a read settles anyway."""
    e = head_next
    while e < n:
        if (read_only[e] and (linearized | (1 << e), state) not in seen
                and step(state, ops[e])[0]):
            return e
        e = nxt[e]
    return head_next


def _drop_unobserved(ops: list[Operation], model: Model[S]) -> list[Operation]:
    """Leave out unknown-outcome operations that no other operation depends on (their
    :meth:`Model.removal_group` is themselves alone: for the KV model, a put whose value no
    read returned).  Such an op may be omitted from any order, and removing it keeps a legal
    order legal, so the verdict is the same -- but each one left in would double the orders
    to rule out before a violation is proven."""
    keep = []
    for op in ops:
        if op.status == "info":
            group = model.removal_group(op, ops)
            if group is not None and len(group) == 1:
                continue
        keep.append(op)
    return keep


def _shrink(ops: list[Operation], model: Model[S], budget: _Budget) -> list[Operation]:
    """Remove chunks of removable operations (with their groups) while the rest still
    admits no order (a ddmin-style pass with halving chunk sizes)."""
    current = ops
    chunk = max(1, len(current) // 2)
    while True:
        i = 0
        while i < len(current):
            if budget.exhausted or timelib.monotonic() > budget.deadline:
                return current
            drop: set[int] = set()
            for op in current[i:i + chunk]:
                group = model.removal_group(op, current)
                if group is not None:
                    drop.update(o.id for o in group)
            if drop:
                trial = [o for o in current if o.id not in drop]
                probe = _Budget(budget.deadline, budget.max_steps)
                if _search(trial, model, probe).outcome == "violation":
                    current = trial
                    continue
            i += chunk
        if chunk == 1:
            return current
        chunk = max(1, chunk // 2)


def check(history: History | Iterable[Operation], model: Model[S], *,
          timeout: float | None = 60.0, max_steps: int | None = None,
          shrink: bool = True) -> LinearizabilityResult:
    """Check ``history`` against ``model``, each of its independent objects separately.

    ``timeout`` (wall-clock seconds for the whole check) and ``max_steps`` (search steps per
    object) bound the work: an object whose search runs out is ``unknown``, and so is every
    object not reached in time.  ``shrink`` reduces each violation to a smaller witness
    (within the same budget; the explanation says so when it stopped early).
    """
    started = timelib.monotonic()
    ops = history.operations() if isinstance(history, History) else list(history)
    ops = [op for op in ops if not (op.status == "info" and model.read_only(op))]
    budget_end = math.inf if timeout is None else started + timeout
    results: dict[str, PartitionResult] = {}
    for key, part in model.partition(ops).items():
        part = _drop_unobserved(part, model)
        budget = _Budget(budget_end, max_steps)
        if timelib.monotonic() > budget_end:
            results[key] = PartitionResult(key, "unknown", len(part), 0,
                                           explanation="not checked: out of time")
            continue
        found = _search(part, model, budget)
        if found.outcome == "ok":
            results[key] = PartitionResult(key, "ok", len(part), found.steps,
                                           tuple(part[i] for i in found.order))
        elif found.outcome == "unknown":
            results[key] = PartitionResult(
                key, "unknown", len(part), found.steps,
                explanation="search budget (time, steps or memory) exhausted")
        else:
            results[key] = _violation(key, part, model, found, budget, shrink)
    outcome: Outcome = "ok"
    if any(r.outcome == "violation" for r in results.values()):
        outcome = "violation"
    elif any(r.outcome == "unknown" for r in results.values()):
        outcome = "unknown"
    return LinearizabilityResult(outcome, results, len(ops), timelib.monotonic() - started)


def _violation(key: str, part: list[Operation], model: Model[S], found: _Search,
               budget: _Budget, shrink: bool) -> PartitionResult:
    witness, final = part, found
    if shrink:
        small = _shrink(sorted(part, key=lambda o: (o.call, o.id)), model, budget)
        # The witness is (nearly always) smaller than what was searched already.
        again = _search(small, model, _Budget(math.inf, 4 * found.steps + 100_000))
        if again.outcome == "violation":
            witness, final = small, again
    blocked = witness[final.blocked]
    state: Any = final.state
    why = f"then {blocked} cannot come next: {model.explain(blocked, state, witness)}"
    if shrink and budget.exhausted:
        why += " (shrinking stopped early: out of budget)"
    return PartitionResult(key, "violation", len(part), found.steps,
                           tuple(witness[i] for i in final.order),
                           tuple(sorted(witness, key=lambda o: (o.call, o.id))),
                           blocked, why)


def check_kv(history: History | Iterable[Operation], *, timeout: float | None = 60.0,
             max_steps: int | None = None, shrink: bool = True) -> LinearizabilityResult:
    """:func:`check` against :class:`KVModel` (put / get / del per key)."""
    return check(history, KVModel(), timeout=timeout, max_steps=max_steps, shrink=shrink)


# ==============================================================================================
# A linearizable workload, for tests and benchmarks
# ==============================================================================================
def simulated_history(rng: random.Random, *, operations: int = 10_000, clients: int = 50,
                      keys: int = 100, reads: float = 0.5, deletes: float = 0.05,
                      unknown: float = 0.01, latency: float = 0.02,
                      think: float = 0.005) -> History:
    """A linearizable history of ``clients`` clients over ``keys`` atomic registers.

    Each client runs one operation at a time (``get`` with probability ``reads``, ``del``
    with ``deletes``, else ``put`` of a unique value), on a random key.  An operation takes
    effect at a random instant within ``latency`` of its invocation and completes within
    ``latency`` after that; a fraction ``unknown`` of them time out instead (recorded as
    ``info``), and half of those never take effect.  Reads answer from the registers at their
    instant, so the history is linearizable by construction.
    """
    specs: list[tuple[float, float, float, int, str, str, str | None, bool]] = []
    free = [(rng.uniform(0, think), c) for c in range(clients)]
    heapq.heapify(free)
    for n in range(operations):
        call, client = heapq.heappop(free)
        r = rng.random()
        kind = "get" if r < reads else "del" if r < reads + deletes else "put"
        value = f"v{n}" if kind == "put" else None
        lin = call + rng.uniform(0, latency)
        ret = lin + rng.uniform(0, latency)
        timed_out = rng.random() < unknown
        if timed_out:
            ret = call + 2 * latency  # the client gives up; the effect may come later
            lin = math.inf if rng.random() < 0.5 else call + rng.uniform(0, 4 * latency)
        specs.append((call, lin, ret, client, kind, f"k{rng.randrange(keys)}", value, timed_out))
        heapq.heappush(free, (ret + rng.uniform(0, think), client))
    outputs: dict[int, str | None] = {}
    registers: dict[str, str | None] = {}
    for i in sorted(range(len(specs)), key=lambda i: specs[i][1]):
        _, lin, _, _, kind, key, value, _ = specs[i]
        if lin == math.inf:
            break
        if kind == "get":
            outputs[i] = registers.get(key)
        else:
            registers[key] = value
    events: list[tuple[float, int, int]] = []  # (time, 0 invoke / 1 completion, spec)
    for i, (call, _, ret, *_rest) in enumerate(specs):
        events += [(call, 0, i), (ret, 1, i)]
    h = History()
    ids: dict[int, int] = {}
    for t, what, i in sorted(events):
        _, _, _, client, kind, key, value, timed_out = specs[i]
        if what == 0:
            ids[i] = h.invoke(client, kind, key, value, time=t)
        elif timed_out:
            h.info(ids[i], time=t)
        else:
            h.ok(ids[i], outputs[i] if kind == "get" else None, time=t)
    return h


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nuraft_mesg.testing.linearizability HISTORY.jsonl ...``: check recorded KV
    histories; prints each verdict.  Exit status: 0 all linearizable, 1 a violation, 2 unknown
    (out of budget) or an unreadable file."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m nuraft_mesg.testing.linearizability",
                                 description="Check JSON-lines KV histories for "
                                             "linearizability.")
    ap.add_argument("histories", nargs="+", type=Path)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per history")
    args = ap.parse_args(argv)
    outcomes: set[str] = set()
    for path in args.histories:
        try:
            history = History.load(path)
        except (OSError, ValueError) as exc:
            print(f"{path}: {exc}")
            outcomes.add("unknown")
            continue
        result = check_kv(history, timeout=args.timeout)
        print(f"{path}: {result}")
        outcomes.add(result.outcome)
    return 1 if "violation" in outcomes else 2 if "unknown" in outcomes else 0


if __name__ == "__main__":
    raise SystemExit(main())
