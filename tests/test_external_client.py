"""The external client (nuraft_mesg's ``grpc_factory`` add_server / append_entry /
rem_server, inventory §2.6): redirects, retries, errors; and the external-client steps of
``MessagingFixture.BasicTests``."""

from __future__ import annotations

import uuid

import pytest
import trio

from nuraft_mesg import (
    NotLeader,
    RaftParams,
    ServerAlreadyExists,
    ServerNotFound,
    to_server_id,
)
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import ResultCode
from nuraft_mesg.raft.types import LogEntry, LogType, MsgType, ServerConfig
from nuraft_mesg.testing.local import LocalCluster, LocalNode

GROUP_TYPE = "test_type"
PARAMS = RaftParams(
    heartbeat_interval_ms=100, election_timeout_ms=(200, 400), max_append_entries=10
)


def in_config(node: LocalNode, gid: str, member: LocalNode) -> bool:
    mgr = node.manager
    return mgr is not None and any(s.endpoint == member.uuid
                                   for s in mgr.get_srv_config_all(gid))


async def test_basic_tests_external_client_steps() -> None:
    """BasicTests with the C++ external client: start() adds app3 through app1; step 3
    appends through app1 and through app2 (redirected) with app3 down; step 10 removes an
    unknown server id (1000) and fails."""
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with LocalCluster.open(
            3, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE
        ) as cluster:
            app1, app2, app3 = cluster.nodes
            async with ExternalClient(cluster.directory) as client:
                await app1.mgr.create_group(gid, GROUP_TYPE)
                await app1.mgr.add_member(gid, app2.uuid)
                await client.add_server(gid, app3.uuid, dest=app1.uuid)
                await cluster.wait_until(lambda: in_config(app1, gid, app3))

                await cluster.kill(app3)
                assert await client.append_entry(gid, b"set a 1", dest=app1.uuid) == b"OK"
                assert await client.append_entry(gid, b"set b 2", dest=app2.uuid) == b"OK"
                # The write through app2 landed in the leader's state machine.
                applied = cluster.applied_log(app1, gid)
                assert [d for _, d in applied][-2:] == [b"set a 1", b"set b 2"]

                with pytest.raises(ServerNotFound):
                    await client.rem_server(gid, 1000, dest=app1.uuid)
                with pytest.raises(ServerNotFound):  # a group nobody hosts
                    await client.append_entry(str(uuid.uuid4()), b"x", dest=app1.uuid)


async def test_membership_changes_through_followers_are_redirected_and_retried() -> None:
    """add_server through a follower is redirected; a rem_server sent right after it meets
    SERVER_IS_JOINING / CONFIG_CHANGING and is retried until it succeeds."""
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with LocalCluster.open(
            4, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE
        ) as cluster:
            app1, app2, app3, app4 = cluster.nodes
            await app1.mgr.create_group(gid, GROUP_TYPE)
            await app1.mgr.add_member(gid, app2.uuid)
            await app1.mgr.add_member(gid, app3.uuid)
            await cluster.wait_until(lambda: app2.mgr.group(gid).leader_id == app1.uuid)
            async with ExternalClient(cluster.directory) as client:
                await client.add_server(gid, app4.uuid, dest=app2.uuid, priority=5)
                await client.rem_server(gid, app3.uuid, dest=app3.uuid)  # in flight: retried
                await cluster.wait_until(lambda: in_config(app1, gid, app4)
                                         and not in_config(app1, gid, app3))
                srv4 = next(s for s in app1.mgr.get_srv_config_all(gid)
                            if s.endpoint == app4.uuid)
                assert srv4.priority == 5 and srv4.id == to_server_id(app4.uuid)
                with pytest.raises(ServerAlreadyExists):
                    await client.add_server(gid, app4.uuid, dest=app4.uuid)
                assert await client.append_entry(gid, b"hello", dest=app4.uuid) == b"hello"
                commit = app1.mgr.group(gid).statistics().commit_index
                await cluster.wait_applied(gid, commit, among=[app1, app2, app4])


async def test_no_leader_is_retried_with_a_bounded_back_off() -> None:
    """With two of three members down there is no leader.  A member that still names the
    dead leader redirects there, and the unreachable leader is an error (not retried: a
    write may or may not have been delivered).  A member that knows no leader (restarted
    alone) answers NOT_LEADER without a redirect: retried until the retry budget is spent,
    then NotLeader."""
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with LocalCluster.open(
            3, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE
        ) as cluster:
            app1, app2, app3 = cluster.nodes
            await app1.mgr.create_group(gid, GROUP_TYPE)
            await app1.mgr.add_member(gid, app2.uuid)
            await app1.mgr.add_member(gid, app3.uuid)
            await cluster.wait_until(lambda: app3.mgr.group(gid).leader_id == app1.uuid)
            await cluster.kill(app1)
            await cluster.kill(app2)
            async with ExternalClient(cluster.directory, retry_timeout=1.0,
                                      request_timeout=2.0) as client:
                with pytest.raises(ServerNotFound):
                    await client.append_entry(gid, b"x", dest=app3.uuid)

                await cluster.kill(app3)
                await cluster.restart(app3)
                assert app3.mgr.group(gid).leader_id == ""
                start = trio.current_time()
                with pytest.raises(NotLeader):
                    await client.append_entry(gid, b"x", dest=app3.uuid)
                took = trio.current_time() - start
                assert 0.5 < took < 5.0


async def test_unknown_destination_and_resolve_by_address() -> None:
    gid = str(uuid.uuid4())
    with trio.fail_after(20):
        async with LocalCluster.open(
            1, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE
        ) as cluster:
            (app1,) = cluster.nodes
            await app1.mgr.create_group(gid, GROUP_TYPE)
            async with ExternalClient({}) as client:  # knows nobody by uuid
                with pytest.raises(ServerNotFound):
                    await client.append_entry(gid, b"x", dest=app1.uuid)
                address = cluster.directory[app1.uuid]
                assert await client.resolve(address) == app1.uuid
                assert await client.append_entry(gid, b"set k v", dest=address) == b"OK"
                status = await client.status(address)
                assert status.server_uuid == app1.uuid
                assert [g.group_id for g in status.groups] == [gid]
                assert status.groups[0].is_leader and status.groups[0].commit_index >= 2


async def test_add_server_with_an_id_that_is_not_its_uuids_is_refused() -> None:
    """The leader learns a joiner's uuid from the add_server request; a server id that does
    not belong to the uuid could misdirect Raft traffic, so it is refused (BAD_REQUEST)."""
    gid = str(uuid.uuid4())
    with trio.fail_after(20):
        async with LocalCluster.open(
            2, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE
        ) as cluster:
            app1, app2 = cluster.nodes
            await app1.mgr.create_group(gid, GROUP_TYPE)
            async with ExternalClient(cluster.directory) as client:
                forged = ServerConfig(to_server_id(app1.uuid), app2.uuid)  # app1's id
                entry = LogEntry(0, LogType.CLUSTER, forged.encode())
                reply = await client._send(gid, MsgType.ADD_SERVER_REQUEST, (entry,), app1.uuid)
                assert not reply.message.accepted
                assert reply.message.result_code == ResultCode.BAD_REQUEST
                assert app1.mgr.group(gid).statistics().last_log_index == 1
