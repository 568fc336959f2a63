"""Throttled error logs: repeated send failures to one peer are logged at powers of two per
60 s window (nuraft_mesg PR #78), for Raft sends as for data-service sends - one mechanism."""

from __future__ import annotations

import logging

import pytest
import trio

from nuraft_mesg import data_service
from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.transport import peers
from nuraft_mesg.transport.base import Status, StepHandler, Transport, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.peers import PeerSender
from nuraft_mesg.transport.throttle import LogThrottle


class _DeadPeer(Transport):
    async def serve(self, handler: StepHandler, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def call(self, peer: str, request: GroupEnvelope, *,
                   timeout: float) -> GroupEnvelope:  # noqa: ASYNC109
        await trio.sleep(0.001)
        raise TransportError(Status.UNAVAILABLE, f"cannot connect to {peer}")


def _heartbeat() -> GroupEnvelope:
    return GroupEnvelope("g", "t", "dead", Message(MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2))


def _failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == peers.__name__ and "failed" in r.getMessage()]


async def test_raft_send_failures_are_logged_at_powers_of_two(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=peers.__name__)
    replies: list[object] = []
    async with PeerSender(_DeadPeer()) as sender:
        for _ in range(100):  # 100 heartbeats to a dead peer, 10 per second
            assert sender.post("dead", _heartbeat(), replies.append)
            await trio.sleep(0.1)
        await trio.sleep(1)
        lines = _failure_lines(caplog)
        assert len(replies) == 100
        assert len(lines) == 7  # failures 1, 2, 4, 8, 16, 32, 64
        assert "failure 64 to this peer with UNAVAILABLE" in lines[-1]
        await trio.sleep(60)  # a new window: the next failure is logged again
        sender.post("dead", _heartbeat(), replies.append)
        await trio.sleep(1)
        assert len(_failure_lines(caplog)) == 8
        assert "failure 1 " in _failure_lines(caplog)[-1]


def test_one_mechanism() -> None:
    assert data_service._LogThrottle is LogThrottle
    assert isinstance(PeerSender(_DeadPeer())._throttle, LogThrottle)


async def test_throttle_forgets_old_keys(autojump_clock: trio.abc.Clock) -> None:
    throttle = LogThrottle(max_keys=3)
    for host in "abcd":
        assert throttle.hit((host, 1)) == 1
    assert len(throttle._seen) == 3
    assert throttle.hit(("a", 1)) == 1  # "a" was forgotten: logged as a first failure
