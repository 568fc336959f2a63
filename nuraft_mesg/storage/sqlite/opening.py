"""Opening the database file: the connection settings (WAL, ``synchronous=FULL``, exclusive
lock), creating or upgrading the schema, the owner check, and reading every group back into
memory while verifying each record's checksum (cutting corrupt log tails).

A mixin of :class:`~nuraft_mesg.storage.sqlite.SqliteStore`, separate because it runs once,
in the constructor, before the committer exists: it is where damage on disk is found and
reported, and nothing in it runs on the write path.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from nuraft_mesg.errors import BadRequest, StorageError
from nuraft_mesg.raft.types import ClusterConfig, HardState, SnapshotMeta
from nuraft_mesg.storage.sqlite.records import GroupData
from nuraft_mesg.storage.sqlite.schema import (
    PER_GROUP_TABLES,
    SCHEMA,
    SCHEMA_VERSION,
    boundary_crc,
    config_crc,
    crc_checks,
    decode_entry,
    object_crc,
    snapshot_crc,
    state_crc,
)

__all__ = ["StoreOpening"]


class StoreOpening:
    """Opens the connection and loads the groups (state set by SqliteStore.__init__)."""

    data_dir: Path
    path: Path
    log: logging.Logger
    _conn: sqlite3.Connection
    _groups: dict[str, GroupData]
    _next_gkey: int

    if TYPE_CHECKING:  # defined by CommitQueue
        def _error(self, action: str, exc: BaseException) -> StorageError: ...

    def _open_connection(self, owner: str | None) -> sqlite3.Connection:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=2.0
            )
        except (sqlite3.Error, OSError) as exc:
            raise self._error("opening the database", exc) from exc
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc):
                    raise StorageError(
                        f"{self.path} is in use by another process (or another store in "
                        "this one): a data_dir belongs to exactly one running manager"
                    ) from exc
                raise
            if str(mode).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN EXCLUSIVE")  # takes the lock, kept until close
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if not 0 <= version <= SCHEMA_VERSION:
                    raise StorageError(
                        f"{self.path} has storage format {version}; this version of "
                        f"nuraft_mesg reads formats up to {SCHEMA_VERSION}"
                    )
                # Format 1 lacks the snapshot tables: created below, in this transaction.
                for statement in SCHEMA.split(";"):  # not executescript: it would COMMIT
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                if owner is not None:
                    row = conn.execute(
                        "SELECT value FROM schema_info WHERE key='owner'"
                    ).fetchone()
                    if row is None:
                        conn.execute(
                            "INSERT INTO schema_info(key, value) VALUES ('owner', ?)", (owner,)
                        )
                    elif row[0] != owner:
                        raise StorageError(
                            f"{self.path} belongs to server {row[0]}, not {owner}: refusing "
                            "to reuse another node's Raft state"
                        )
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            _fsync_dir(self.data_dir)
        except StorageError:
            conn.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise self._error("opening the database", exc) from exc
        return conn

    def _load(self) -> None:
        """Read every group into memory, verifying checksums; cut corrupt log tails."""
        try:
            self._load_rows()
        except StorageError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise self._error(
                "reading the database (it may be damaged: restore it or empty the data_dir "
                "and re-add this node to its groups)",
                exc,
            ) from exc

    def _load_rows(self) -> None:
        conn = self._conn
        by_key: dict[int, GroupData] = {}
        max_key = 0
        for gkey, gid, gtype, sid, created in conn.execute(
            "SELECT gkey, group_id, group_type, server_id, created FROM groups"
        ):
            data = GroupData(gkey, gid, gtype, sid, created, registered=True)
            by_key[gkey] = data
            self._groups[gid] = data
            max_key = max(max_key, gkey)
        orphans: set[int] = set()

        def owner_of(gkey: int) -> GroupData | None:
            data = by_key.get(gkey)
            if data is None:
                orphans.add(gkey)
            return data

        def corrupt(data: GroupData, what: str) -> None:
            if data.corrupt is None:
                data.corrupt = what
                self.log.error(
                    "%s: group %s: %s; the group cannot start on this node (remove it with "
                    "leave_group and re-add this node to the group)",
                    self.path, data.group_id, what,
                )

        for gkey, term, vote, commit, crc in conn.execute(
            "SELECT gkey, term, vote, commit_idx, crc FROM hard_state"
        ):
            held = owner_of(gkey)
            if held is None:
                continue
            if not crc_checks(crc, state_crc, held.seed, term, vote, commit):
                corrupt(held, "the hard state (term, vote, commit) fails its checksum")
                continue
            held.state = HardState(term, vote, commit)
        for gkey, blob, crc in conn.execute("SELECT gkey, data, crc FROM config"):
            held = owner_of(gkey)
            if held is None:
                continue
            if not crc_checks(crc, config_crc, held.seed, blob):
                corrupt(held, "the cluster config fails its checksum")
                continue
            try:
                held.config = ClusterConfig.decode(blob)
            except BadRequest as exc:
                corrupt(held, f"the cluster config cannot be decoded ({exc})")
        for gkey, start, bterm, crc in conn.execute(
            "SELECT gkey, start_index, boundary_term, crc FROM log_boundary"
        ):
            held = owner_of(gkey)
            if held is None:
                continue
            if not crc_checks(crc, boundary_crc, held.seed, start, bterm) or start < 1:
                corrupt(held, "the log boundary (start index, term) fails its checksum")
                continue
            held.start, held.boundary_term = start, bterm

        cleanup: list[tuple[str, tuple[int, ...]]] = []
        self._load_snapshots(by_key, owner_of, corrupt, cleanup)
        current: GroupData | None = None
        cut_at = 0  # index from which the current group's log is dropped (0: not cut)
        dropped = 0
        prev_term = 0

        def finish_group() -> None:
            if current is not None and cut_at:
                cleanup.append(("DELETE FROM log WHERE gkey=? AND idx>=?", (current.gkey, cut_at)))
                self.log.error(
                    "%s: group %s: log record at index %d is corrupt; the log is cut there: "
                    "%d record(s) from index %d on were dropped and will not be replayed",
                    self.path, current.group_id, cut_at, dropped, cut_at,
                )

        stale: set[int] = set()
        for gkey, idx, term, kind, buf, ts, crc in conn.execute(
            "SELECT gkey, idx, term, type, buffer, ts, crc FROM log ORDER BY gkey, idx"
        ):
            if current is None or gkey != current.gkey:
                finish_group()
                current = owner_of(gkey)
                cut_at = dropped = 0
                prev_term = current.boundary_term if current is not None else 0
            if current is None:
                continue
            if idx < current.start:
                stale.add(gkey)  # below the boundary: left behind by nothing we write
                continue
            if cut_at:
                dropped += 1
                continue
            expected = current.start + len(current.entries)
            entry = decode_entry(current.seed, idx, expected, prev_term, term, kind, buf, ts, crc)
            if entry is None:
                cut_at = expected
                dropped = 1
                continue
            current.entries.append(entry)
            prev_term = entry.term
        finish_group()

        for gkey in sorted(stale):
            data = by_key[gkey]
            self.log.warning(
                "%s: group %s: dropping log records below the compaction boundary %d",
                self.path, data.group_id, data.start - 1,
            )
            cleanup.append(("DELETE FROM log WHERE gkey=? AND idx<?", (gkey, data.start)))
        for gkey in sorted(orphans):
            self.log.warning("%s: dropping records of unregistered group key %d", self.path, gkey)
            for table in PER_GROUP_TABLES[:-1]:
                cleanup.append((f"DELETE FROM {table} WHERE gkey=?", (gkey,)))
        for data in self._groups.values():
            if data.state is not None and data.state.commit >= data.next_slot:
                self.log.warning(
                    "%s: group %s: saved commit index %d is beyond the log (last index %d)",
                    self.path, data.group_id, data.state.commit, data.next_slot - 1,
                )
        if cleanup:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in cleanup:
                    conn.execute(sql, args)
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        self._next_gkey = max_key + 1

    def _load_snapshots(
        self,
        by_key: dict[int, GroupData],
        owner_of: Callable[[int], GroupData | None],
        corrupt: Callable[[GroupData, str], None],
        cleanup: list[tuple[str, tuple[int, ...]]],
    ) -> None:
        """Read every group's snapshot and its objects, verifying checksums (after the log
        boundaries: whether a bad snapshot is fatal depends on them)."""
        conn = self._conn
        found: dict[int, tuple[SnapshotMeta, int]] = {}
        bad: dict[int, str] = {}
        for gkey, last_index, last_term, blob, count, crc in conn.execute(
            "SELECT gkey, last_index, last_term, config, objects, crc FROM snapshot"
        ):
            held = owner_of(gkey)
            if held is None:
                continue
            if not crc_checks(crc, snapshot_crc, held.seed, last_index, last_term, count, blob):
                bad[gkey] = "record fails its checksum"
                continue
            if count < 1 or last_index < 1:
                bad[gkey] = f"record is invalid ({count} objects, index {last_index})"
                continue
            try:
                config = ClusterConfig.decode(blob)
            except BadRequest as exc:
                bad[gkey] = f"config cannot be decoded ({exc})"
                continue
            found[gkey] = (SnapshotMeta(last_index, last_term, config), count)
        objects: dict[int, list[bytes]] = {}
        for gkey, obj_id, last_index, data, crc in conn.execute(
            "SELECT gkey, obj_id, last_index, data, crc FROM snapshot_object "
            "ORDER BY gkey, obj_id"
        ):
            held = owner_of(gkey)
            if held is None or gkey in bad:
                continue
            entry = found.get(gkey)
            if entry is None:
                bad[gkey] = "objects have no snapshot record"
                continue
            meta, count = entry
            got = objects.setdefault(gkey, [])
            n = len(got)
            if obj_id != n or last_index != meta.last_index or n >= count:
                bad[gkey] = f"objects do not match its record (object {obj_id} of {count})"
            elif not crc_checks(crc, object_crc, held.seed, last_index, obj_id, data):
                bad[gkey] = f"object {obj_id} of {count} fails its checksum"
            else:
                got.append(data)
        for gkey, (meta, count) in found.items():
            if gkey in bad:
                continue
            held = by_key[gkey]
            got = objects.get(gkey, [])
            if len(got) != count:
                bad[gkey] = f"has {len(got)} of its {count} objects"
            elif meta.last_index < held.start - 1:
                bad[gkey] = (f"(index {meta.last_index}) is behind the log boundary "
                             f"{held.start - 1}")
            else:
                held.snapshot, held.snapshot_objects = meta, got
        for gkey, why in sorted(bad.items()):
            held = by_key[gkey]
            if held.corrupt is not None:
                continue  # unusable anyway: keep its rows as they are for inspection
            if held.start > 1:
                # The log was compacted behind it: without it the compacted prefix is lost.
                corrupt(held, f"the stored snapshot {why}, and the log was compacted behind it")
                continue
            self.log.error(
                "%s: group %s: the stored snapshot %s; it is dropped (the log was never "
                "compacted, so every entry is replayed from it instead)",
                self.path, held.group_id, why,
            )
            cleanup.append(("DELETE FROM snapshot_object WHERE gkey=?", (gkey,)))
            cleanup.append(("DELETE FROM snapshot WHERE gkey=?", (gkey,)))


def _fsync_dir(path: Path) -> None:
    """Make the directory entry of a new database file durable (POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
