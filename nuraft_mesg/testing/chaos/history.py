"""The recorded history: one JSON object per line, the schema the linearizability checker
(:mod:`nuraft_mesg.testing.linearizability`) reads::

    {"type": "invoke"|"ok"|"fail"|"info", "id": int, "client": int|str,
     "kind": "put"|"get"|"del", "key": str, "value": str|null, "time": float}

``info`` is an operation whose outcome is unknown (a timeout, a lost connection): it may or
may not have taken effect.  Keys are ``<group>/<key>``: every group is its own register set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

__all__ = ["Event", "History", "Kind", "Op", "Type", "load"]

Kind = Literal["put", "get", "del"]
Type = Literal["invoke", "ok", "fail", "info"]


@dataclass(slots=True)
class Op:
    """One operation, invoke to completion (``type`` None while it runs)."""

    id: int
    client: int
    kind: Kind
    key: str
    value: str | None
    invoked: float
    type: Type | None = None
    completed: float = 0.0
    result: str | None = None
    """A read's value."""

    @property
    def group(self) -> str:
        return self.key.split("/", 1)[0]


@dataclass(slots=True)
class Event:
    type: Type
    id: int
    client: int | str
    kind: Kind
    key: str
    value: str | None
    time: float


@dataclass
class History:
    """Operations in memory plus their events streamed to ``path`` (flushed per event, so a
    killed rig leaves its history behind)."""

    path: Path
    ops: list[Op] = field(default_factory=list)
    _out: IO[str] | None = None

    def __post_init__(self) -> None:
        self._out = open(self.path, "w")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _write(self, op: Op, type_: Type, value: str | None, at: float) -> None:
        assert self._out is not None
        self._out.write(json.dumps({"type": type_, "id": op.id, "client": op.client,
                                    "kind": op.kind, "key": op.key, "value": value,
                                    "time": round(at, 6)}) + "\n")
        self._out.flush()

    def invoke(self, client: int, kind: Kind, key: str, value: str | None, at: float) -> Op:
        op = Op(len(self.ops), client, kind, key, value, at)
        self.ops.append(op)
        self._write(op, "invoke", value, at)
        return op

    def complete(self, op: Op, type_: Type, at: float, result: str | None = None) -> None:
        op.type, op.completed, op.result = type_, at, result
        self._write(op, type_, result if op.kind == "get" and type_ == "ok" else None, at)


def load(path: Path) -> list[Event]:
    events = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        events.append(Event(d["type"], d["id"], d["client"], d["kind"], d["key"], d["value"],
                            d["time"]))
    return events
