"""A durable log compacted behind a snapshot must not be replayed into a state machine that
lost that snapshot: the group refuses to start instead of silently skipping the prefix."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import trio
import trio.testing

from nuraft_mesg import InMemoryApplication, Manager, ManagerConfig, RaftParams

SNAPSHOTTING = RaftParams(
    heartbeat_interval_ms=50, election_timeout_ms=(150, 300), snapshot_distance=5,
    reserved_log_items=2,
)


async def test_in_memory_state_machine_over_compacted_durable_log_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    me, gid = str(uuid.uuid4()), str(uuid.uuid4())
    cfg = ManagerConfig(server_uuid=me, data_dir=str(tmp_path))
    with trio.fail_after(20):
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type("kv", SNAPSHOTTING)
            await mgr.create_group(gid, "kv")
            for i in range(20):
                await mgr.append_entries(gid, [f"set k{i} {i}".encode()])
            smgr = mgr.lookup_state_manager(gid)
            assert smgr is not None
            assert smgr.load_log_store().start_index() > 1  # compacted on disk
        caplog.set_level(logging.ERROR)
        # A fresh in-memory state machine (as after a process restart) has applied nothing.
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type("kv", SNAPSHOTTING)
            # Registering the type started the rejoin in the background; let it run out.
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert gid not in mgr.group_ids
    assert any("state machine has applied only up to 0" in r.getMessage() for r in caplog.records)
