"""The file format: the SQL schema, its version, and the checksums every record carries.

Separate because it is the contract with the bytes on disk: changing anything here changes
what older and newer versions of nuraft_mesg can read (see ``SCHEMA_VERSION``), while the
rest of the store only moves records between this format and memory.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from nuraft_mesg.raft.types import LogEntry, LogType

__all__ = [
    "DB_NAME",
    "PER_GROUP_TABLES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "boundary_crc",
    "config_crc",
    "crc_checks",
    "crc_seed",
    "decode_entry",
    "entry_crc",
    "object_crc",
    "snapshot_crc",
    "state_crc",
]

DB_NAME = "nuraft.db"
SCHEMA_VERSION = 2
"""1: log, hard state, config; 2: + snapshots (a format-1 file is upgraded when opened)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    gkey       INTEGER PRIMARY KEY,
    group_id   TEXT NOT NULL UNIQUE,
    group_type TEXT NOT NULL,
    server_id  INTEGER NOT NULL,
    created    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS hard_state (
    gkey       INTEGER PRIMARY KEY,
    term       INTEGER NOT NULL,
    vote       INTEGER NOT NULL,
    commit_idx INTEGER NOT NULL,
    crc        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS config (
    gkey INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    crc  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log_boundary (
    gkey          INTEGER PRIMARY KEY,
    start_index   INTEGER NOT NULL,
    boundary_term INTEGER NOT NULL,
    crc           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    gkey   INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    term   INTEGER NOT NULL,
    type   INTEGER NOT NULL,
    buffer BLOB NOT NULL,
    ts     INTEGER NOT NULL,
    crc    INTEGER NOT NULL,
    PRIMARY KEY (gkey, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot (
    gkey       INTEGER PRIMARY KEY,
    last_index INTEGER NOT NULL,
    last_term  INTEGER NOT NULL,
    config     BLOB NOT NULL,
    objects    INTEGER NOT NULL,
    crc        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_object (
    gkey       INTEGER NOT NULL,
    obj_id     INTEGER NOT NULL,
    last_index INTEGER NOT NULL,
    data       BLOB NOT NULL,
    crc        INTEGER NOT NULL,
    PRIMARY KEY (gkey, obj_id)
);
"""
# (snapshot_object is a rowid table: SQLite advises against WITHOUT ROWID for large rows.)

PER_GROUP_TABLES = (
    "log", "hard_state", "config", "log_boundary", "snapshot_object", "snapshot", "groups"
)

_ENTRY_HEADER = struct.Struct(">qqqq")  # index, term, type, timestamp
_STATE = struct.Struct(">qqq")  # term, vote, commit
_BOUNDARY = struct.Struct(">qq")  # start index, boundary term
_SNAPSHOT = struct.Struct(">qqq")  # last index, last term, number of objects
_OBJECT = struct.Struct(">qq")  # snapshot's last index, object id


def crc_seed(group_id: str) -> int:
    return zlib.crc32(group_id.encode())


def entry_crc(seed: int, index: int, term: int, kind: int, ts: int, buffer: bytes) -> int:
    return zlib.crc32(buffer, zlib.crc32(_ENTRY_HEADER.pack(index, term, kind, ts), seed))


def state_crc(seed: int, term: int, vote: int, commit: int) -> int:
    return zlib.crc32(_STATE.pack(term, vote, commit), seed)


def config_crc(seed: int, data: bytes) -> int:
    return zlib.crc32(data, seed)


def boundary_crc(seed: int, start: int, term: int) -> int:
    return zlib.crc32(_BOUNDARY.pack(start, term), seed)


def snapshot_crc(seed: int, last_index: int, last_term: int, objects: int, config: bytes) -> int:
    return zlib.crc32(config, zlib.crc32(_SNAPSHOT.pack(last_index, last_term, objects), seed))


def object_crc(seed: int, last_index: int, obj_id: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(_OBJECT.pack(last_index, obj_id), seed))


def crc_checks(crc: object, compute: Callable[..., int], *fields: object) -> bool:
    """Whether a stored checksum matches ``compute(*fields)``; fields of the wrong type (a
    damaged row) fail the check instead of raising."""
    try:
        return compute(*fields) == crc
    except (TypeError, struct.error, OverflowError):
        return False


def decode_entry(
    seed: int,
    idx: object,
    expected: int,
    prev_term: int,
    term: object,
    kind: object,
    buf: object,
    ts: object,
    crc: object,
) -> LogEntry | None:
    """The entry of a log row, or None if the row is corrupt or does not continue the log."""
    if idx != expected or not isinstance(buf, bytes):
        return None
    if not isinstance(term, int) or not isinstance(kind, int) or not isinstance(ts, int):
        return None
    if not crc_checks(crc, entry_crc, seed, expected, term, kind, ts, buf):
        return None
    if term < prev_term:
        return None
    try:
        log_type = LogType(kind)
    except ValueError:
        return None
    return LogEntry(term=term, type=log_type, buffer=buf, timestamp=ts)
