"""A port of nuraft_mesg's ``MessagingFixture.BasicTests`` (inventory §5), step by step,
on real Managers and real purerpc over loopback.

The C++ fixture's external-client steps (``add_server`` / ``append_entry`` through a bare
mesg_factory) are done with Manager calls here; tests/test_external_client.py covers the
external client itself.
"""

from __future__ import annotations

import uuid

import pytest
import trio

from nuraft_mesg import (
    Cancelled,
    NotLeader,
    RaftParams,
    ServerNotFound,
    to_server_id,
)
from nuraft_mesg.testing.local import LocalCluster

GROUP_TYPE = "test_type"
# The C++ fixture's parameters: election 200/400 ms, heartbeat 100 ms, max_append_size 10.
PARAMS = RaftParams(
    heartbeat_interval_ms=100, election_timeout_ms=(200, 400), max_append_entries=10
)


async def test_basic_tests_port() -> None:
    gid = str(uuid.uuid4())
    bogus = str(uuid.uuid4())
    with trio.fail_after(60):
        async with LocalCluster.open(
            3, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE
        ) as cluster:
            app1, app2, app3 = cluster.nodes
            # start(): create on 1, add 2, add 3 (the C++ test adds 3 through an external
            # client; here through the Manager).
            await app1.mgr.create_group(gid, GROUP_TYPE)
            await app1.mgr.add_member(gid, app2.uuid)
            await app1.mgr.add_member(gid, app3.uuid)
            assert {s.endpoint for s in app1.mgr.get_srv_config_all(gid)} == {
                app1.uuid, app2.uuid, app3.uuid
            }

            # 1. app1 reports leader.
            assert app1.mgr.group(gid).is_leader
            assert app1.mgr.group(gid).leader_id == app1.uuid

            # 2. append_entries succeeds.
            assert await app1.mgr.append_entries(gid, [b"set a 1"]) == [b"OK"]

            # 3. Crash app3; writes through app1 still commit with 2 of 3.  Through app2 (a
            #    follower, no auto-forwarding in this fixture) the refusal names the leader.
            await cluster.kill(app3)
            assert await app1.mgr.append_entries(gid, [b"set b 2"]) == [b"OK"]
            with pytest.raises(NotLeader) as refused:
                await app2.mgr.append_entries(gid, [b"set c 3"])
            assert refused.value.leader_id == app1.mgr.server_id

            # 4. Restart app3 with the same uuid and port and join_group with its state
            #    manager; become_leader on a bogus group fails, on the real one succeeds.
            await cluster.restart(app3)
            with pytest.raises(Cancelled):
                await app3.mgr.become_leader(bogus)
            await app3.mgr.become_leader(gid)
            assert app3.mgr.group(gid).is_leader
            assert await app3.mgr.append_entries(gid, [b"set d 4"]) == [b"OK"]

            # 5. add_member on a bogus group fails.
            with pytest.raises(ServerNotFound):
                await app1.mgr.add_member(bogus, str(uuid.uuid4()))

            # 6. Crash app3 again: app1 (priority 100 against 1) leads again.
            await cluster.kill(app3)
            await cluster.wait_leader(gid, among=[app1, app2])
            assert app1.mgr.group(gid).is_leader

            # 7. Restart and rejoin app3: app1 is still leader; then app3 takes over.
            await cluster.restart(app3)
            await cluster.wait_until(lambda: app3.mgr.group(gid).leader_id == app1.uuid)
            assert app1.mgr.group(gid).is_leader
            await app3.mgr.become_leader(gid)
            assert app3.mgr.group(gid).is_leader

            # 8. Three servers; add a 4th through app3.
            assert len(app3.mgr.get_srv_config_all(gid)) == 3
            app4 = await cluster.add_node(priority=1)
            await app3.mgr.add_member(gid, app4.uuid)
            assert len(app3.mgr.get_srv_config_all(gid)) == 4

            # 9. Remove app1 (a follower now).
            await app3.mgr.rem_member(gid, app1.uuid)
            app1_id = to_server_id(app1.uuid)
            await cluster.wait_until(
                lambda: all(s.id != app1_id for s in app3.mgr.get_srv_config_all(gid))
            )
            await cluster.wait_until(lambda: app1.app.state_managers[gid].left)

            # 10. Negative cases on a bogus group.
            await app1.mgr.leave_group(bogus)  # no-op
            with pytest.raises(ServerNotFound):
                await app1.mgr.append_entries(bogus, [b"x"])
            with pytest.raises(ServerNotFound):
                await app1.mgr.rem_member(bogus, app3.uuid)
            # The group still works with its new membership.
            assert await app3.mgr.append_entries(gid, [b"set e 5"]) == [b"OK"]
            commit = app3.mgr.group(gid).statistics().commit_index
            await cluster.wait_applied(gid, commit, among=[app2, app3, app4])
            logs = {n.name: cluster.applied_log(n, gid) for n in (app2, app3, app4)}
            assert len({tuple(v) for v in logs.values()}) == 1, logs
            await app4.mgr.leave_group(gid)
            assert app4.app.state_managers[gid].destroyed
            assert gid not in app4.mgr.group_ids
