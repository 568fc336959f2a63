"""The wire format of a snapshot transfer (install_snapshot), in one place.

A snapshot travels as NuRaft's *logical snapshot objects*: the leader's runtime reads object
``obj_id`` (0, 1, 2, ...) of its latest snapshot from the state machine and the core sends it
in one ``install_snapshot_request``:

* ``last_log_index`` / ``last_log_term``: the snapshot's ``last_index`` / ``last_term``;
* ``commit_index``: the leader's commit index;
* ``entries``: exactly one ``SNAPSYNC`` entry (term = the snapshot's last term) whose buffer is
  :meth:`SnapshotChunk.encode`::

      version  u8    (1)
      flags    u8    (bit 0: this is the last object; other bits must be 0)
      obj_id   u64   big-endian
      cfg_len  u32   big-endian
      config   cfg_len bytes: the snapshot's ClusterConfig (its JSON encoding)
      data     the rest: the object's bytes, opaque to Raft

The follower answers with an ``install_snapshot_response``: ``accepted`` with ``next_index`` =
the next object it needs (``obj_id + 1`` after staging one; 0 to restart a transfer it has
no staged part of), and ``context`` = :func:`encode_snapshot_reply` (the snapshot's last index
and whether it now holds the whole snapshot; then ``next_index`` is ``last_index + 1``).

Hostile bytes raise :class:`~nuraft_mesg.errors.BadRequest`, which the core answers with
``BAD_REQUEST``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nuraft_mesg.errors import BadRequest, RaftError
from nuraft_mesg.raft.types import (
    ClusterConfig,
    LogEntry,
    LogType,
    Message,
    MsgType,
    SnapshotMeta,
)

__all__ = [
    "SnapshotChunk",
    "SnapshotRead",
    "decode_snapshot_reply",
    "encode_snapshot_reply",
]

_VERSION = 1
_FLAG_LAST = 0x01
_HEADER = struct.Struct(">BBQI")
_REPLY = struct.Struct(">QB")
_MAX_OBJ_ID = (1 << 62) - 1


@dataclass(slots=True, frozen=True)
class SnapshotRead:
    """Leader side: the runtime must read object ``obj_id`` of snapshot ``meta`` from the
    state machine and hand it back with ``RaftNode.send_snapshot_chunk``."""

    peer: int
    meta: SnapshotMeta
    obj_id: int


@dataclass(slots=True, frozen=True)
class SnapshotChunk:
    """One object of a snapshot in transit (follower side: to stage with the state machine's
    ``save_snapshot_chunk``)."""

    meta: SnapshotMeta
    obj_id: int
    data: bytes
    is_last: bool

    @property
    def is_first(self) -> bool:
        return self.obj_id == 0

    def encode(self) -> bytes:
        """The SNAPSYNC entry buffer (see the module docstring)."""
        cfg = self.meta.config.encode()
        flags = _FLAG_LAST if self.is_last else 0
        return _HEADER.pack(_VERSION, flags, self.obj_id, len(cfg)) + cfg + self.data

    def to_message(self, term: int, src: int, dest: int, commit_index: int) -> Message:
        """The install_snapshot_request carrying this object."""
        return Message(
            MsgType.INSTALL_SNAPSHOT_REQUEST,
            term,
            src,
            dest,
            last_log_term=self.meta.last_term,
            last_log_index=self.meta.last_index,
            commit_index=commit_index,
            entries=(LogEntry(self.meta.last_term, LogType.SNAPSYNC, self.encode()),),
        )

    @staticmethod
    def from_message(m: Message) -> SnapshotChunk:
        """Parse and validate an install_snapshot_request.

        Raises:
            BadRequest: anything malformed or impossible.
        """
        if len(m.entries) != 1 or m.entries[0].type != LogType.SNAPSYNC:
            raise BadRequest("install_snapshot carries one SNAPSYNC entry")
        last_index, last_term = m.last_log_index, m.last_log_term
        if last_index < 1 or not 1 <= last_term <= m.term:
            raise BadRequest(f"impossible snapshot position {last_index}/{last_term}")
        if m.entries[0].term != last_term:
            raise BadRequest("the SNAPSYNC entry's term is not the snapshot's last term")
        buf = m.entries[0].buffer
        if len(buf) < _HEADER.size:
            raise BadRequest("truncated snapshot chunk header")
        version, flags, obj_id, cfg_len = _HEADER.unpack_from(buf)
        if version != _VERSION or flags & ~_FLAG_LAST or obj_id > _MAX_OBJ_ID:
            raise BadRequest("unknown snapshot chunk format")
        end = _HEADER.size + cfg_len
        if end > len(buf):
            raise BadRequest("snapshot chunk config overruns the buffer")
        try:
            config = ClusterConfig.decode(buf[_HEADER.size : end])
        except RaftError as exc:
            raise BadRequest(f"bad snapshot config: {exc}") from None
        if config.log_idx > last_index or not config.voters:
            raise BadRequest("snapshot config is not one in effect at its index")
        meta = SnapshotMeta(last_index, last_term, config)
        return SnapshotChunk(meta, obj_id, bytes(buf[end:]), bool(flags & _FLAG_LAST))


def encode_snapshot_reply(last_index: int, done: bool) -> bytes:
    """``context`` of an install_snapshot_response: which snapshot it answers, and whether
    the follower now holds everything up to it."""
    return _REPLY.pack(last_index, 1 if done else 0)


def decode_snapshot_reply(context: bytes) -> tuple[int, bool] | None:
    """``(last_index, done)``, or None for a malformed context."""
    if len(context) != _REPLY.size:
        return None
    last_index, done = _REPLY.unpack(context)
    if done > 1:
        return None
    return last_index, bool(done)
