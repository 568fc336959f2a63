"""A writer whose entries reach its node only inside a snapshot gets a typed answer.

The node proposed the entries (it led their term), then fell behind and received a newer
leader's snapshot covering them.  They are committed, but this node never applied them one by
one, so their results do not exist here.  It used to answer with empty results (``b""`` for
each entry), which a caller cannot tell from a state machine's real empty answer.
"""

from __future__ import annotations

import uuid

import pytest
import trio

from nuraft_mesg import (
    Cancelled,
    InMemoryApplication,
    Manager,
    ManagerConfig,
    RaftParams,
    ResultUnknown,
)
from nuraft_mesg.group import RaftGroup
from nuraft_mesg.raft.node import Proposal
from nuraft_mesg.raft.types import SnapshotMeta


@pytest.mark.parametrize("same_term", [True, False])
async def test_entries_that_arrive_in_a_snapshot_fail_typed(same_term: bool) -> None:
    me = str(uuid.uuid4())
    gid = str(uuid.uuid4())
    config = ManagerConfig(server_uuid=me, port=0, default_group_type="kv")
    with trio.fail_after(20):
        async with Manager(config, InMemoryApplication(me)) as mgr:
            mgr.register_group_type("kv", RaftParams(heartbeat_interval_ms=50,
                                                     election_timeout_ms=(100, 200)))
            await mgr.create_group(gid, "kv")
            group: RaftGroup = mgr._groups[gid]
            term = group.core.hard_state.term
            first = group.applied_index + 100  # far ahead: nothing applies them one by one
            whole = group.watch_apply(Proposal(term, first, first + 2))
            straddling = group.watch_apply(Proposal(term, first + 3, first + 6))
            later = group.watch_apply(Proposal(term, first + 7, first + 7))
            snapshot_term = term if same_term else term + 1
            meta = SnapshotMeta(first + 4, snapshot_term, group.core.config)
            group._settle_snapshotted_waiters(meta)

            expected = ResultUnknown if same_term else Cancelled
            for slot in (whole, straddling):
                assert slot.done
                with pytest.raises(expected):
                    await slot.wait()
            # Nothing of the straddling write is left behind to be completed a second time,
            # and a write after the snapshot still waits for its own apply.
            assert all(i > first + 6 for i in group._apply_waiters)
            assert not later.done
            assert set(group._apply_waiters) == {first + 7}
