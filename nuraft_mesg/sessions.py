"""Exactly-once client sessions (Raft thesis §6.3; Dragonboat's client sessions).

A client that retries a write after a timeout, a dropped connection or a leader change cannot
tell whether its first attempt was committed: without help the state machine may apply the
write twice.  A session gives each write a client id and a sequence number; the
:class:`SessionStateMachine` wrapper (around any state machine) remembers, per client, the
results of the writes it applied, so a retried write is applied once and answered with its
first result::

    sm = SessionStateMachine(KVStateMachine())              # on every member
    async with mgr.session() as s:                          # or ExternalClient(...).session()
        result = await s.append_entry(gid, b"set x 1")      # retried with the same seq

The session travels *inside* the entry bytes, behind a small versioned header, so nothing
changes on the wire or in the log stores; entries without the header go straight to the
inner state machine (non-session writes keep working next to sessions).

Request entry: ``MAGIC_REQUEST | version | kind | client id (16) | epoch (8) | seq (8) |
acked (8) | payload`` (integers big-endian).  Kinds: REGISTER (open the session in this
group; its result's payload is the session's *epoch*, the log index that created it), WRITE
(``seq`` numbers the client's writes from 1; ``acked`` promises that the client holds the
results of every seq up to it, so the cluster drops them), CLOSE (forget the session).  A
write must name the epoch it was registered with: a stale copy of a REGISTER committed late
(after the session expired) creates a new incarnation that the old writes do not match, so
they are refused rather than applied again.  A session entry's result is ``MAGIC_RESULT |
version | status | payload``: OK (payload = the inner result), EXPIRED, STALE (a seq at or
below what the client acknowledged, or below what the cluster had to forget: never
applied), BAD (a malformed header: never applied).

Expiry (bounded memory, deterministic on every replica because it depends only on applied
entries, never on a clock): at most ``max_sessions`` sessions per group; registering one more
evicts the session least recently used, counted in applied log indices.  A session keeps at
most ``max_results_per_session`` unacknowledged results; past that the oldest is dropped and
its seq (and every lower one) answered STALE.  A write on an evicted or closed session gets
EXPIRED, raised as :class:`~nuraft_mesg.errors.SessionExpired` by the client -- never a
second apply: the client opens a new session and decides itself whether to write again.

The session table is part of the state: it is in every snapshot (its own objects, ahead of
the inner state machine's) and is rebuilt with the inner state on restart (from the stored
snapshot and the log replayed after it), so it survives restarts with the durable store.
Wrap a state machine that is rebuilt from snapshots and the log (like
:class:`~nuraft_mesg.storage.memory.KVStateMachine`); one that persists itself outside
snapshots would need the session table persisted with it.
"""

from __future__ import annotations

import contextlib
import enum
import struct
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

import trio

from nuraft_mesg.errors import BadRequest, RaftError, SessionExpired
from nuraft_mesg.raft.types import ClusterConfig, SnapshotMeta
from nuraft_mesg.storage.interfaces import StateMachine

__all__ = [
    "ClientSession",
    "Kind",
    "SessionStateMachine",
    "Status",
    "decode_request",
    "decode_result",
    "encode_request",
    "encode_result",
]

MAGIC_REQUEST: Final = b"\xffNMS"
MAGIC_RESULT: Final = b"\xffNMR"
VERSION: Final = 1
_HEADER: Final = struct.Struct(">4sBB16sQQQ")
_EPOCH: Final = struct.Struct(">Q")
_RESULT: Final = struct.Struct(">4sBB")
_SESSION: Final = struct.Struct(">16sQQQI")
_ENTRY: Final = struct.Struct(">QI")
_COUNT: Final = struct.Struct(">I")
MAX_SEQ: Final = (1 << 64) - 1


class Kind(enum.IntEnum):
    REGISTER = 1
    WRITE = 2
    CLOSE = 3


class Status(enum.IntEnum):
    OK = 0
    EXPIRED = 1
    STALE = 2
    BAD = 3


@dataclass(frozen=True, slots=True)
class Request:
    kind: Kind
    client_id: bytes
    epoch: int
    seq: int
    acked: int
    payload: bytes


def encode_request(kind: Kind, client_id: bytes, epoch: int = 0, seq: int = 0, acked: int = 0,
                   payload: bytes = b"") -> bytes:
    """The entry bytes of one session request."""
    if len(client_id) != 16:
        raise ValueError("a client id is 16 bytes")
    return _HEADER.pack(MAGIC_REQUEST, VERSION, kind, client_id, epoch, seq, acked) + payload


def decode_request(data: bytes) -> Request | None:
    """The session request in ``data``; None for an entry without the header (not a session
    entry).  Raises ValueError for a header that is malformed or of an unknown version."""
    if not data.startswith(MAGIC_REQUEST):
        return None
    if len(data) < _HEADER.size:
        raise ValueError("truncated session header")
    _, version, kind, client_id, epoch, seq, acked = _HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"session header version {version}")
    try:
        kind = Kind(kind)
    except ValueError:
        raise ValueError(f"unknown session request kind {kind}") from None
    if kind == Kind.WRITE and seq == 0:
        raise ValueError("session writes are numbered from 1")
    return Request(kind, client_id, epoch, seq, acked, data[_HEADER.size:])


def encode_result(status: Status, payload: bytes = b"") -> bytes:
    return _RESULT.pack(MAGIC_RESULT, VERSION, status) + payload


def decode_result(data: bytes) -> tuple[Status, bytes]:
    """``(status, payload)`` of a session entry's result.

    Raises:
        BadRequest: not a session result -- the group's state machine does not keep client
            sessions (it is not wrapped in :class:`SessionStateMachine`).
    """
    if len(data) < _RESULT.size or not data.startswith(MAGIC_RESULT):
        raise BadRequest("the group's state machine does not keep client sessions")
    _, version, status = _RESULT.unpack_from(data)
    if version != VERSION or status not in Status.__members__.values():
        raise BadRequest(f"unknown session result (version {version}, status {status})")
    return Status(status), data[_RESULT.size:]


@dataclass(slots=True)
class _Session:
    epoch: int
    """Log index of the REGISTER that created it."""
    floor: int = 0
    """Every seq at or below it was applied and its result dropped, or is refused."""
    last_index: int = 0
    """Log index of the latest entry of this session (the LRU clock)."""
    results: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class _Snapshot:
    meta: SnapshotMeta
    inner_meta: SnapshotMeta | None
    """The inner machine's part (None while a received snapshot's session objects arrive)."""
    chunks: list[bytes]
    """The session objects' contents (the inner index, then the session table)."""


class SessionStateMachine(StateMachine):
    """Wraps ``inner`` with exactly-once client sessions (see the module doc).

    Args:
        max_sessions: sessions kept per group; one more evicts the least recently used.
        max_results_per_session: unacknowledged results kept per session.
        snapshot_chunk_size: size of the snapshot objects that carry the session table.
    """

    __slots__ = ("inner", "max_results_per_session", "max_sessions", "snapshot_chunk_size",
                 "sessions", "_last_index", "_snapshot", "_staged")

    def __init__(self, inner: StateMachine, *, max_sessions: int = 4096,
                 max_results_per_session: int = 1024,
                 snapshot_chunk_size: int = 64 * 1024) -> None:
        if max_sessions < 1 or max_results_per_session < 1 or snapshot_chunk_size < 1:
            raise ValueError("the session limits and the chunk size must be >= 1")
        self.inner = inner
        self.max_sessions = max_sessions
        self.max_results_per_session = max_results_per_session
        self.snapshot_chunk_size = snapshot_chunk_size
        self.sessions: OrderedDict[bytes, _Session] = OrderedDict()
        """Client id -> session, least recently used first."""
        self._last_index = inner.last_commit_index()
        self._snapshot: _Snapshot | None = None
        self._staged: _Snapshot | None = None

    def __repr__(self) -> str:
        return f"<SessionStateMachine {len(self.sessions)} sessions over {self.inner!r}>"

    # -- applying ------------------------------------------------------------------------------
    def commit(self, index: int, data: bytes) -> bytes:
        try:
            req = decode_request(data)
        except ValueError:
            self._last_index = index
            return encode_result(Status.BAD)
        if req is None:
            result = self.inner.commit(index, data)
            self._last_index = index
            return result
        result = self._apply(index, req)
        self._last_index = index
        return result

    def _apply(self, index: int, req: Request) -> bytes:
        sessions = self.sessions
        cid = req.client_id
        session = sessions.get(cid)
        if req.kind == Kind.REGISTER:
            if session is None:
                session = sessions[cid] = _Session(index)
                while len(sessions) > self.max_sessions:
                    sessions.popitem(last=False)
            self._touch(cid, index)
            return encode_result(Status.OK, _EPOCH.pack(session.epoch))
        if session is None or session.epoch != req.epoch:
            return encode_result(Status.EXPIRED)
        if req.kind == Kind.CLOSE:
            del sessions[cid]
            return encode_result(Status.OK)
        self._touch(cid, index)
        if req.acked > session.floor:
            session.floor = req.acked
            for seq in [s for s in session.results if s <= req.acked]:
                del session.results[seq]
        known = session.results.get(req.seq)
        if known is not None:
            return encode_result(Status.OK, known)  # a retry: answered, not applied again
        if req.seq <= session.floor:
            return encode_result(Status.STALE)
        result = self.inner.commit(index, req.payload)
        session.results[req.seq] = result
        if len(session.results) > self.max_results_per_session:
            oldest = min(session.results)
            del session.results[oldest]
            session.floor = max(session.floor, oldest)
        return encode_result(Status.OK, result)

    def _touch(self, cid: bytes, index: int) -> None:
        self.sessions[cid].last_index = index
        self.sessions.move_to_end(cid)

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        self.inner.commit_config(index, config)
        self._last_index = index

    def last_commit_index(self) -> int:
        return self._last_index

    def query(self, query: bytes) -> bytes:
        """Reads are the inner machine's: sessions only deduplicate writes."""
        return self.inner.query(query)

    # -- snapshots: the session table's objects, then the inner machine's ---------------------
    # Session entries that the inner machine never sees (registrations, answered retries)
    # leave it behind the wrapper's applied index, so the inner snapshot is taken at *its*
    # last index (with the snapshot's term and config): the inner machine may insist that a
    # snapshot is of what it applied.  That index leads the session objects.
    @property
    def supports_snapshots(self) -> bool:
        return self.inner.supports_snapshots

    def create_snapshot(self, meta: SnapshotMeta) -> None:
        inner_meta = self._inner_meta(meta, self.inner.last_commit_index())
        self.inner.create_snapshot(inner_meta)
        blob = _EPOCH.pack(inner_meta.last_index) + self._encode_table()
        size = self.snapshot_chunk_size
        self._snapshot = _Snapshot(meta, inner_meta,
                                   [blob[i:i + size] for i in range(0, len(blob), size)])

    @staticmethod
    def _inner_meta(meta: SnapshotMeta, inner_index: int) -> SnapshotMeta:
        if inner_index == meta.last_index:
            return meta
        return SnapshotMeta(inner_index, meta.last_term, meta.config)

    def last_snapshot(self) -> SnapshotMeta | None:
        return self._snapshot.meta if self._snapshot is not None else None

    def read_snapshot_chunk(self, meta: SnapshotMeta, obj_id: int) -> tuple[bytes, bool]:
        snap = self._snapshot
        if snap is None or snap.meta != meta or snap.inner_meta is None:
            raise ValueError(f"snapshot {meta.last_index} is not the latest one")
        chunks = snap.chunks
        if 0 <= obj_id < len(chunks):
            more = obj_id + 1 < len(chunks)
            return bytes([more]) + chunks[obj_id], False
        return self.inner.read_snapshot_chunk(snap.inner_meta, obj_id - len(chunks))

    def save_snapshot_chunk(self, meta: SnapshotMeta, obj_id: int, data: bytes,
                            is_first: bool, is_last: bool) -> None:
        if is_first:
            self._staged = _Snapshot(meta, None, [])
        staged = self._staged
        if staged is None or staged.meta != meta:
            raise ValueError(f"snapshot object {obj_id} of {meta.last_index} out of order")
        chunks = staged.chunks
        if staged.inner_meta is None:  # still receiving session objects
            if obj_id != len(chunks) or not data or is_last:
                raise ValueError(f"session object {obj_id} of snapshot {meta.last_index} "
                                 "is malformed or out of order")
            chunks.append(bytes(data[1:]))
            if data[0] == 0:
                head = b"".join(chunks)[:_EPOCH.size]
                if len(head) != _EPOCH.size:
                    raise ValueError(f"snapshot {meta.last_index} has no session table")
                (inner_index,) = _EPOCH.unpack(head)
                staged.inner_meta = self._inner_meta(meta, inner_index)
            return
        inner_id = obj_id - len(chunks)
        self.inner.save_snapshot_chunk(staged.inner_meta, inner_id, data, inner_id == 0, is_last)

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        staged = self._staged
        if staged is None or staged.meta != meta or staged.inner_meta is None:
            raise ValueError(f"snapshot {meta.last_index} is not completely staged")
        sessions = self._decode_table(b"".join(staged.chunks)[_EPOCH.size:])
        self.inner.apply_snapshot(staged.inner_meta)
        self.sessions = sessions
        self._last_index = meta.last_index
        self._snapshot = staged
        self._staged = None

    def _encode_table(self) -> bytes:
        parts = [_COUNT.pack(len(self.sessions))]
        for cid, s in self.sessions.items():  # in LRU order: eviction stays deterministic
            parts.append(_SESSION.pack(cid, s.epoch, s.floor, s.last_index, len(s.results)))
            for seq in sorted(s.results):
                result = s.results[seq]
                parts.append(_ENTRY.pack(seq, len(result)))
                parts.append(result)
        return b"".join(parts)

    @staticmethod
    def _decode_table(blob: bytes) -> OrderedDict[bytes, _Session]:
        sessions: OrderedDict[bytes, _Session] = OrderedDict()
        try:
            (count,) = _COUNT.unpack_from(blob)
            pos = _COUNT.size
            for _ in range(count):
                cid, epoch, floor, last_index, n = _SESSION.unpack_from(blob, pos)
                pos += _SESSION.size
                session = _Session(epoch, floor, last_index)
                for _ in range(n):
                    seq, length = _ENTRY.unpack_from(blob, pos)
                    pos += _ENTRY.size
                    if pos + length > len(blob):
                        raise ValueError("truncated result")
                    session.results[seq] = blob[pos:pos + length]
                    pos += length
                sessions[cid] = session
        except struct.error as exc:
            raise ValueError(f"undecodable session table: {exc}") from None
        if pos != len(blob):
            raise ValueError("trailing bytes after the session table")
        return sessions


# ---------------------------------------------------------------------------------------------
# The client side
# ---------------------------------------------------------------------------------------------
Send = Callable[[str, list[bytes]], Awaitable[list[bytes]]]
"""``send(group_id, entries) -> results``: one attempt to replicate a batch (results one per
entry), raising a RaftError on failure."""

_NOT_RETRIED: Final = (BadRequest, SessionExpired)
_BACKOFF_START: Final = 0.05
_BACKOFF_MAX: Final = 1.0


class ClientSession:
    """A client's session: numbers its writes and retries each one, with the same seq, until
    it is answered or ``retry_timeout`` runs out (timeouts, lost connections, leader changes:
    any RaftError but BadRequest and SessionExpired).  Opened in a group by its first write
    there; closed in every such group when the ``async with`` block ends.

    Made by :meth:`nuraft_mesg.manager.Manager.session` and
    :meth:`nuraft_mesg.client.ExternalClient.session`; ``send`` is their one-attempt write.
    """

    def __init__(self, send: Send, *, retry_timeout: float = 30.0,
                 client_id: bytes | None = None,
                 on_retry: Callable[[RaftError], None] | None = None) -> None:
        self._send = send
        self.retry_timeout = retry_timeout
        self.client_id = client_id if client_id is not None else uuidlib.uuid4().bytes
        if len(self.client_id) != 16:
            raise ValueError("a client id is 16 bytes")
        self._on_retry = on_retry
        self._next_seq = 1
        self._in_flight: set[int] = set()
        self._epochs: dict[str, int] = {}
        """Group -> the epoch this session was registered with there."""
        self._expired: set[str] = set()
        self.retries = 0
        """Attempts resent so far (each with the seq of its first attempt)."""

    async def __aenter__(self) -> ClientSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def acked(self) -> int:
        """Every seq up to this one has been answered (the cluster may forget them)."""
        return min(self._in_flight, default=self._next_seq) - 1

    async def append_entry(self, group_id: str, data: bytes) -> bytes:
        (result,) = await self.append_entries(group_id, [data])
        return result

    async def append_entries(self, group_id: str, entries: Sequence[bytes]) -> list[bytes]:
        """Write ``entries`` once each (one seq per entry, one proposal); returns their
        results -- the first application's, if a retry found them applied.

        Raises:
            SessionExpired: the cluster forgot this session (or a seq of it: STALE).
            BadRequest: the group's state machine keeps no sessions, or a bad request.
            RaftError: no answer within ``retry_timeout`` (the writes may be applied later,
                but never twice).
        """
        if not entries:
            raise BadRequest("append_entries needs at least one entry")
        epoch = await self._register(group_id)
        first = self._next_seq
        self._next_seq += len(entries)
        seqs = range(first, first + len(entries))
        self._in_flight.update(seqs)
        try:
            acked = self.acked
            batch = [encode_request(Kind.WRITE, self.client_id, epoch, seq, acked, bytes(data))
                     for seq, data in zip(seqs, entries, strict=True)]
            results = await self._with_retries(group_id, batch)
            out = []
            for raw in results:
                status, payload = decode_result(raw)
                if status == Status.EXPIRED:
                    self._expired.add(group_id)
                    raise SessionExpired("the cluster expired this session")
                if status == Status.STALE:
                    raise SessionExpired("the cluster dropped this write's result (its seq "
                                         "was acknowledged or fell behind the session's limit)")
                if status != Status.OK:
                    raise BadRequest(f"the cluster refused the write ({status.name})")
                out.append(payload)
            return out
        finally:
            self._in_flight.difference_update(seqs)

    async def close(self) -> None:
        """Forget this session in every group it wrote to (one entry each, one attempt: a
        group that cannot be reached expires it in time)."""
        epochs, self._epochs = self._epochs, {}
        for gid, epoch in sorted(epochs.items()):
            with contextlib.suppress(RaftError):  # one attempt: expiry is the fallback
                await self._send(gid, [encode_request(Kind.CLOSE, self.client_id, epoch)])

    async def _register(self, group_id: str) -> int:
        """The session's epoch in ``group_id`` (registered there by the first call)."""
        if group_id in self._expired:
            raise SessionExpired("the cluster expired this session")
        epoch = self._epochs.get(group_id)
        if epoch is not None:
            return epoch
        (raw,) = await self._with_retries(
            group_id, [encode_request(Kind.REGISTER, self.client_id)])
        status, payload = decode_result(raw)
        if status != Status.OK or len(payload) != _EPOCH.size:
            raise BadRequest(f"the session was not registered ({status.name})")
        (epoch,) = _EPOCH.unpack(payload)
        return self._epochs.setdefault(group_id, epoch)

    async def _with_retries(self, group_id: str, batch: list[bytes]) -> list[bytes]:
        deadline = trio.current_time() + self.retry_timeout
        backoff = _BACKOFF_START
        while True:
            try:
                results = await self._send(group_id, batch)
            except _NOT_RETRIED:
                raise
            except RaftError as exc:
                if trio.current_time() + backoff > deadline:
                    raise
                if self._on_retry is not None:
                    self._on_retry(exc)
                self.retries += 1
                await trio.sleep(backoff)  # a back-off, not synchronisation
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if len(results) != len(batch):
                raise RaftError(f"{len(batch)} entries but {len(results)} results")
            return results
