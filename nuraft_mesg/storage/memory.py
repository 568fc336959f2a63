"""In-memory implementations of the storage interfaces.

Nothing here touches a disk, but the objects outlive the node that uses them: a test "crashes"
a node by dropping its runtime and restarts it with the same :class:`MemoryStateManager`, which
then hands back the same log, hard state and configuration -- exactly what a durable store
would.  They also check their arguments more strictly than the contract requires, so that a
core bug shows up as an exception in tests instead of a silently corrupt log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import trio

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.raft.ready import Event
from nuraft_mesg.raft.types import (
    ClusterConfig,
    HardState,
    LogEntry,
    ServerConfig,
    SnapshotMeta,
)
from nuraft_mesg.storage.interfaces import LogStore, StateMachine, StateManager

__all__ = ["KVStateMachine", "MemoryLogStore", "MemoryStateManager"]


class MemoryLogStore(LogStore):
    """A list-backed :class:`LogStore`: O(1) append and ``term_at``, compaction supported.

    Beyond the contract it rejects writes whose terms decrease and compactions whose term
    contradicts the entry held at that index (both impossible in a correct Raft log).
    """

    __slots__ = ("_entries", "_start", "_boundary_term")

    def __init__(self) -> None:
        self._entries: list[LogEntry] = []
        self._start = 1  # index of self._entries[0]
        self._boundary_term = 0  # term of the entry at self._start - 1

    def __repr__(self) -> str:
        return f"<MemoryLogStore [{self._start}, {self.next_slot()})>"

    def start_index(self) -> int:
        return self._start

    def next_slot(self) -> int:
        return self._start + len(self._entries)

    def entries(self, start: int, end: int) -> list[LogEntry]:
        if start > end:
            raise ValueError(f"reversed range [{start}, {end})")
        if start < self._start or end > self.next_slot():
            raise IndexError(
                f"range [{start}, {end}) not within held [{self._start}, {self.next_slot()})"
            )
        return self._entries[start - self._start : end - self._start]

    def term_at(self, index: int) -> int:
        if index == 0:
            return 0
        if index == self._start - 1:
            return self._boundary_term
        if self._start <= index < self.next_slot():
            return self._entries[index - self._start].term
        raise IndexError(
            f"index {index} not held (boundary {self._start - 1}, next slot {self.next_slot()})"
        )

    async def write(
        self, first_index: int, entries: Sequence[LogEntry], *, truncate_from: int = 0
    ) -> None:
        # No checkpoint: an in-memory write completes at once, and a yield here would cost
        # every Ready a scheduler round (the latency of every commit, with thousands of
        # tasks).  Tests that need a slow disk use the harness's SimDisk.
        keep = self.next_slot()
        if truncate_from > 0:
            if not self._start <= truncate_from <= keep:
                raise ValueError(f"truncate_from {truncate_from} outside [{self._start}, {keep}]")
            keep = truncate_from
        if entries:
            if first_index != keep:
                raise ValueError(f"first_index {first_index} != next slot {keep}")
            prev_term = self.term_at(keep - 1)
            for offset, entry in enumerate(entries):
                if entry.term < prev_term:
                    raise ValueError(
                        f"term {entry.term} at index {first_index + offset} "
                        f"follows term {prev_term}"
                    )
                prev_term = entry.term
        del self._entries[keep - self._start :]
        self._entries.extend(entries)

    async def compact(self, up_to_index: int, term: int) -> None:
        await trio.lowlevel.checkpoint()
        if up_to_index < self._start:
            return
        if up_to_index < self.next_slot():
            held = self._entries[up_to_index - self._start].term
            if held != term:
                raise ValueError(f"compact({up_to_index}, {term}): entry has term {held}")
            del self._entries[: up_to_index + 1 - self._start]
        else:
            self._entries.clear()
        self._start = up_to_index + 1
        self._boundary_term = term


class KVStateMachine(StateMachine):
    """A small key-value state machine that also records every entry it applies.

    ``b"set <key> <value>"`` and ``b"del <key>"`` change :attr:`data` and return ``b"OK"``
    (keys contain no spaces; values may).  Anything else is applied as an opaque record and
    echoed back, like nuraft_mesg's echo state machine.  :attr:`applied` holds every
    ``(index, data)`` in order, so tests can compare replicas entry by entry.

    Reads: :meth:`query` answers ``b"get <key>"`` with ``b"=" + value`` when the key is set
    and ``b"-"`` when it is not (values may be empty, so a missing key needs its own answer);
    :meth:`get_query` and :meth:`decode_get` build and read them.

    Snapshots are supported: one is :attr:`data`, :attr:`applied` and :attr:`configs` as
    JSON, sent in objects of ``snapshot_chunk_size`` bytes (small sizes exercise multi-object
    transfers).  It keeps its latest snapshot and one staged incoming snapshot in memory.
    """

    __slots__ = ("applied", "configs", "data", "_last_index", "snapshot_chunk_size",
                 "_snapshot", "_staged", "_staged_complete")

    def __init__(self, *, snapshot_chunk_size: int = 64 * 1024) -> None:
        if snapshot_chunk_size < 1:
            raise ValueError("snapshot_chunk_size must be >= 1")
        self.applied: list[tuple[int, bytes]] = []
        self.configs: list[tuple[int, ClusterConfig]] = []
        self.data: dict[str, str] = {}
        self._last_index = 0
        self.snapshot_chunk_size = snapshot_chunk_size
        self._snapshot: tuple[SnapshotMeta, bytes] | None = None
        self._staged: tuple[SnapshotMeta, list[bytes]] | None = None
        self._staged_complete = False

    def commit(self, index: int, data: bytes) -> bytes:
        self._advance(index)
        self.applied.append((index, data))
        command = _parse(data)
        if command is None:
            return data
        op, key, value = command
        if op == "set":
            self.data[key] = value
        else:
            self.data.pop(key, None)
        return b"OK"

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        self._advance(index)
        self.configs.append((index, config))

    def query(self, query: bytes) -> bytes:
        """``b"get <key>"``: ``b"=" + value``, or ``b"-"`` for a key that is not set.

        Raises:
            BadRequest: anything else (another verb, no key, a key with a space, not UTF-8).
        """
        try:
            verb, _, key = query.decode("utf-8").partition(" ")
        except UnicodeDecodeError:
            raise BadRequest("a KV query is UTF-8 text") from None
        if verb != "get" or not key or " " in key:
            raise BadRequest(f"a KV query is b'get <key>', not {query[:64]!r}")
        value = self.data.get(key)
        return b"-" if value is None else b"=" + value.encode("utf-8")

    @staticmethod
    def get_query(key: str) -> bytes:
        """The query that reads ``key``."""
        return b"get " + key.encode("utf-8")

    @staticmethod
    def decode_get(answer: bytes) -> str | None:
        """The value in an answer of :meth:`query`; None for a key that is not set.

        Raises:
            BadRequest: not an answer of :meth:`query`.
        """
        if answer == b"-":
            return None
        if answer.startswith(b"="):
            try:
                return answer[1:].decode("utf-8")
            except UnicodeDecodeError:
                pass
        raise BadRequest(f"not a KV read answer: {answer[:64]!r}")

    def last_commit_index(self) -> int:
        return self._last_index

    # -- snapshots ---------------------------------------------------------------------------
    @property
    def supports_snapshots(self) -> bool:
        return True

    def create_snapshot(self, meta: SnapshotMeta) -> None:
        if meta.last_index != self._last_index:
            raise ValueError(f"snapshot at {meta.last_index} but applied {self._last_index}")
        state = {
            "data": self.data,
            "applied": [[i, d.hex()] for i, d in self.applied],
            "configs": [[i, c.encode().decode()] for i, c in self.configs],
        }
        blob = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
        self._snapshot = (meta, blob)

    def last_snapshot(self) -> SnapshotMeta | None:
        return self._snapshot[0] if self._snapshot is not None else None

    def read_snapshot_chunk(self, meta: SnapshotMeta, obj_id: int) -> tuple[bytes, bool]:
        if self._snapshot is None or self._snapshot[0] != meta:
            raise ValueError(f"snapshot {meta.last_index} is not the latest one")
        blob = self._snapshot[1]
        size = self.snapshot_chunk_size
        start = obj_id * size
        if obj_id < 0 or (obj_id > 0 and start >= len(blob)):
            raise ValueError(f"snapshot {meta.last_index} has no object {obj_id}")
        return blob[start : start + size], start + size >= len(blob)

    def save_snapshot_chunk(self, meta: SnapshotMeta, obj_id: int, data: bytes,
                            is_first: bool, is_last: bool) -> None:
        if is_first:
            self._staged = (meta, [])
            self._staged_complete = False
        staged = self._staged
        if staged is None or staged[0] != meta or len(staged[1]) != obj_id:
            raise ValueError(f"snapshot object {obj_id} of {meta.last_index} out of order")
        staged[1].append(bytes(data))
        self._staged_complete = is_last

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        staged = self._staged
        if staged is None or staged[0] != meta or not self._staged_complete:
            raise ValueError(f"snapshot {meta.last_index} is not completely staged")
        blob = b"".join(staged[1])
        try:
            state = json.loads(blob)
            data = {str(k): str(v) for k, v in state["data"].items()}
            applied = [(int(i), bytes.fromhex(d)) for i, d in state["applied"]]
            configs = [(int(i), ClusterConfig.decode(c.encode())) for i, c in state["configs"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"undecodable snapshot {meta.last_index}: {exc}") from None
        self.data, self.applied, self.configs = data, applied, configs
        self._last_index = meta.last_index
        self._snapshot = (meta, blob)
        self._staged = None
        self._staged_complete = False

    def _advance(self, index: int) -> None:
        # Applying twice or backwards is a runtime bug that would silently fork replicas.
        if index <= self._last_index:
            raise ValueError(f"apply of index {index} after index {self._last_index}")
        self._last_index = index


def _parse(data: bytes) -> tuple[str, str, str] | None:
    """Decode a set/del command; ``None`` for anything that is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = text.split(" ", 2)
    if parts[0] == "set" and len(parts) == 3 and parts[1]:
        return "set", parts[1], parts[2]
    if parts[0] == "del" and len(parts) == 2 and parts[1]:
        return "del", parts[1], ""
    return None


class MemoryStateManager(StateManager):
    """A :class:`StateManager` that keeps everything in memory (on this object).

    The default initial configuration lists only this server, as nuraft_mesg's test state
    manager does, so a new group elects it.  :attr:`events` records every Raft event and
    :attr:`left` whether :meth:`leave` was called, for tests to inspect.
    """

    __slots__ = (
        "_server_id",
        "endpoint",
        "_initial_config",
        "_config",
        "_state",
        "_log_store",
        "_state_machine",
        "destroyed",
        "left",
        "ready_count",
        "events",
    )

    def __init__(
        self,
        server_id: int,
        endpoint: str,
        *,
        initial_config: ClusterConfig | None = None,
        state_machine: StateMachine | None = None,
        log_store: LogStore | None = None,
    ) -> None:
        self._server_id = server_id
        self.endpoint = endpoint
        if initial_config is None:
            initial_config = ClusterConfig(servers=(ServerConfig(id=server_id, endpoint=endpoint),))
        self._initial_config = initial_config
        self._config: ClusterConfig | None = None
        self._state: HardState | None = None
        self._log_store: LogStore = log_store if log_store is not None else MemoryLogStore()
        self._state_machine: StateMachine = (
            state_machine if state_machine is not None else KVStateMachine()
        )
        self.destroyed = False
        self.left = False
        self.ready_count = 0
        self.events: list[Event] = []

    def __repr__(self) -> str:
        return f"<MemoryStateManager server_id={self._server_id} endpoint={self.endpoint!r}>"

    @property
    def server_id(self) -> int:
        return self._server_id

    def load_config(self) -> ClusterConfig:
        return self._config if self._config is not None else self._initial_config

    async def save_config(self, config: ClusterConfig) -> None:
        self._check_alive("save_config")
        self._config = config

    async def save_state(self, state: HardState) -> None:
        self._check_alive("save_state")
        self._state = state

    def read_state(self) -> HardState | None:
        return self._state

    def load_log_store(self) -> LogStore:
        self._check_alive("load_log_store")
        return self._log_store

    def get_state_machine(self) -> StateMachine:
        return self._state_machine

    def permanent_destroy(self) -> None:
        self.destroyed = True
        self._config = None
        self._state = None
        # Drop the log (a caller-supplied store is only released: we cannot empty it).
        self._log_store = MemoryLogStore()

    def leave(self) -> None:
        self.left = True

    def become_ready(self) -> None:
        self.ready_count += 1

    def raft_event(self, event: Event) -> None:
        self.events.append(event)

    def _check_alive(self, what: str) -> None:
        if self.destroyed:
            raise RuntimeError(f"{what} on a permanently destroyed state manager")
