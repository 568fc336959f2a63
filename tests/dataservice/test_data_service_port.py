"""Ports of nuraft_mesg's ``DataServiceTest.BasicTest1``, ``BasicTest2`` and
``NegativeTests`` (inventory §5), with the same counts and expectations, on real Managers
over purerpc on loopback."""

from __future__ import annotations

import uuid

import pytest
import trio

from nuraft_mesg import BadRequest, ServerNotFound, to_server_id
from nuraft_mesg.data_service import ALL, FOLLOWER, LEADER
from nuraft_mesg.manager import GroupContext

from . import GROUP_TYPE, REQUEST_DATA, SEND_DATA, check_payload, data_fixture, payload

FOUR_MIB = 4 << 20


async def test_basic_test1() -> None:
    with trio.fail_after(60):
        async with data_fixture() as fx:
            gid = fx.group_id
            gid2 = str(uuid.uuid4())
            app1, app2, app3 = fx.apps
            for node in fx.apps:
                fx.completions.bind(node, gid2)

            # 1. Add app4 and app5 to the test group.
            app4 = await fx.add_app(bind=(gid, gid2))
            app5 = await fx.add_app(bind=(gid, gid2))
            await app1.mgr.add_member(gid, app4.uuid)
            await app1.mgr.add_member(gid, app5.uuid)

            # 2. app4 creates a second group; adds app1 and app2 with priority 80, then app5
            #    as a learner with priority 80.
            await app4.mgr.create_group(gid2, GROUP_TYPE)
            await app4.mgr.add_member(gid2, app1.uuid, priority=80)
            await app4.mgr.add_member(gid2, app2.uuid, priority=80)
            await app4.mgr.add_member(gid2, app5.uuid, priority=80, learner=True)
            status = {p.id: p for p in app4.mgr.group(gid2).raft_status()}
            assert status.keys() == {app4.uuid, app1.uuid, app2.uuid, app5.uuid}
            assert status[app4.uuid].priority == 100
            for other in (app1, app2, app5):
                assert status[other.uuid].priority == 80
            assert status[app5.uuid].is_learner
            assert not any(status[n.uuid].is_learner for n in (app1, app2, app4))
            # Every member of the second group knows its leader before it sends to LEADER.
            await fx.cluster.wait_until(lambda: app5.mgr.group(gid2).leader_id == app4.uuid)
            await fx.cluster.wait_until(lambda: app4.mgr.group(gid).leader_id == app1.uuid)

            # 3. Concurrent calls, all expected to succeed.
            blobs = payload()
            data = b"".join(blobs)
            ctx1 = app1.mgr.group(gid)
            echoes: dict[str, bytes] = {}

            async def bidi(key: str, ctx: GroupContext, dest: str | int | object) -> None:
                echoes[key] = await ctx.data_service_request_bidirectional(
                    dest, REQUEST_DATA, blobs  # type: ignore[arg-type]
                )

            others = [n for n in fx.apps if n is not app1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ctx1.data_service_request_unidirectional, ALL, SEND_DATA,
                                   blobs)
                nursery.start_soon(bidi, "app5->leader", app5.mgr.group(gid2), LEADER)
                nursery.start_soon(bidi, "app4->leader", app4.mgr.group(gid), LEADER)
                nursery.start_soon(ctx1.data_service_request_unidirectional, app2.uuid,
                                   SEND_DATA, blobs)
                for n in others:
                    nursery.start_soon(bidi, f"app1->{n.name}", ctx1, to_server_id(n.uuid))
            assert echoes["app4->leader"] == data  # the echoed data is verified
            assert all(v == data for v in echoes.values()), echoes.keys()
            assert len(echoes) == 2 + len(others)

            # 4. A 4 MiB payload: unidirectional ALL, and bidirectional LEADER (echo verified).
            big = bytes(range(256)) * (FOUR_MIB // 256)
            assert check_payload(b"".join(payload())) and len(big) == FOUR_MIB
            await ctx1.data_service_request_unidirectional(ALL, REQUEST_DATA, big)
            echoed = await app2.mgr.group(gid).data_service_request_bidirectional(
                LEADER, REQUEST_DATA, big
            )
            assert echoed == big

            # 5. Add app3 to the second group; the leader's unidirectional ALL reaches it.
            await app4.mgr.add_member(gid2, app3.uuid)
            before = fx.completions.per_node[(app3.name, gid2)]
            await app4.mgr.group(gid2).data_service_request_unidirectional(ALL, SEND_DATA,
                                                                           blobs)
            assert fx.completions.per_node[(app3.name, gid2)] == before + 1

            # 6. 20 server completions: 15 in the test group, 5 in the second.
            assert fx.completions.per_group[gid] == 15
            assert fx.completions.per_group[gid2] == 5
            assert fx.completions.total == 20
            assert fx.completions.bad_payloads == 0

            # 7. Every app leaves the second group (the fixture's teardown leaves the first).
            for n in fx.apps:
                await n.mgr.leave_group(gid2)


async def test_basic_test2() -> None:
    with trio.fail_after(30):
        async with data_fixture() as fx:
            gid = fx.group_id
            app1, app2, app3 = fx.apps
            ctx1 = app1.mgr.group(gid)
            assert ctx1.is_leader
            assert ctx1.leader_id == app1.uuid

            # Every member has the three entries (create + 2 adds) before the status is read.
            await fx.cluster.wait_until(
                lambda: all(p.last_log_idx == 3 for p in ctx1.raft_status())
                and len(ctx1.raft_status()) == 3
                and all(p.last_succ_resp_us > 0 for p in ctx1.raft_status()
                        if p.id != app1.uuid)
            )
            status = {p.id: p for p in ctx1.raft_status()}
            assert len(status) == 3
            assert all(p.last_log_idx == 3 for p in status.values())
            assert status[app1.uuid].last_succ_resp_us == 0
            assert status[app2.uuid].last_succ_resp_us > 0
            assert status[app3.uuid].last_succ_resp_us > 0

            for follower in (app2, app3):
                ctx = follower.mgr.group(gid)

                def knows_leader(c: GroupContext = ctx) -> bool:
                    return c.leader_id == app1.uuid

                await fx.cluster.wait_until(knows_leader)
                assert not ctx.is_leader
                assert ctx.leader_id == app1.uuid
                own = ctx.raft_status()
                assert [p.id for p in own] == [follower.uuid]

            config = ctx1.cluster_config()
            assert len(config) == 3
            assert {r.peer_id for r in config} == {app1.uuid, app2.uuid, app3.uuid}


async def test_negative_tests() -> None:
    with trio.fail_after(30):
        async with data_fixture() as fx:
            gid = fx.group_id
            app1, app2, app3 = fx.apps
            blobs = payload()
            leader = app1.mgr.group(gid)
            follower = app2.mgr.group(gid)
            await fx.cluster.wait_until(lambda: follower.leader_id == app1.uuid)
            done_before = fx.completions.total

            # unidirectional ALL with an unknown name: success (fire and forget).
            await leader.data_service_request_unidirectional(ALL, "no_such_request", blobs)
            # bidirectional LEADER with an unknown name, from a follower: BAD_REQUEST.
            with pytest.raises(BadRequest):
                await follower.data_service_request_bidirectional(LEADER, "no_such_request",
                                                                  blobs)
            # the leader sending to LEADER, bidirectional or unidirectional: BAD_REQUEST.
            with pytest.raises(BadRequest):
                await leader.data_service_request_bidirectional(LEADER, REQUEST_DATA, blobs)
            with pytest.raises(BadRequest):
                await leader.data_service_request_unidirectional(LEADER, SEND_DATA, blobs)
            # a random peer uuid, unidirectional or bidirectional: SERVER_NOT_FOUND.
            stranger = str(uuid.uuid4())
            with pytest.raises(ServerNotFound):
                await leader.data_service_request_unidirectional(stranger, SEND_DATA, blobs)
            with pytest.raises(ServerNotFound):
                await leader.data_service_request_bidirectional(stranger, REQUEST_DATA, blobs)
            # server id -1, unidirectional: SERVER_NOT_FOUND.
            with pytest.raises(ServerNotFound):
                await leader.data_service_request_unidirectional(-1, SEND_DATA, blobs)
            # bidirectional ALL: BAD_REQUEST.
            with pytest.raises(BadRequest):
                await leader.data_service_request_bidirectional(ALL, REQUEST_DATA, blobs)
            # unidirectional FOLLOWER: BAD_REQUEST.
            with pytest.raises(BadRequest):
                await leader.data_service_request_unidirectional(FOLLOWER, SEND_DATA, blobs)
            # make_repl_ctx(nullptr, nullptr): a context without a data service,
            # unidirectional or bidirectional ALL: SERVER_NOT_FOUND.
            bare = GroupContext(app1.mgr._get(gid))
            with pytest.raises(ServerNotFound):
                await bare.data_service_request_unidirectional(ALL, SEND_DATA, blobs)
            with pytest.raises(ServerNotFound):
                await bare.data_service_request_bidirectional(ALL, REQUEST_DATA, blobs)
            # repl ctx with _server == nullptr (the group no longer runs here),
            # unidirectional ALL: SERVER_NOT_FOUND.
            gone = app3.mgr.group(gid)
            await app3.mgr.leave_group(gid)
            with pytest.raises(ServerNotFound):
                await gone.data_service_request_unidirectional(ALL, SEND_DATA, blobs)

            assert fx.completions.total == done_before  # nothing reached a handler
