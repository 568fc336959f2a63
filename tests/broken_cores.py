"""Deliberately broken Raft cores, shared by the tests that prove the checkers catch them
(the core-level ``tests/raft/test_checker.py`` and the harness-level
``tests/harness/test_checkers.py``).  Each breaks one rule of Raft and nothing else."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import HardState, Message, MsgType

Factory = Callable[..., RaftNode]


class CommitsOldTerms(RaftNode):
    """(a) Commits any entry a quorum holds, whatever its term (no Raft §5.4.2 check)."""

    def _maybe_commit(self) -> None:
        voters = self.config.voters
        matches = [pr.match for p, pr in self.progress.items() if p in voters]
        if self.id in voters:
            matches.append(self.log.persisted)
        if len(matches) < self.config.quorum:
            return
        candidate = sorted(matches, reverse=True)[self.config.quorum - 1]
        if candidate > self.commit:
            self._set_commit(candidate)
            self._pending_broadcast = True


def forgets_vote(node_id: int, params: RaftParams, **kw: Any) -> RaftNode:
    """(b) Loads its term but not its vote after a restart."""
    hs = kw.pop("hard_state", None) or HardState()
    return RaftNode(node_id, params, hard_state=dataclasses.replace(hs, vote=-1), **kw)


class SkipsPrevCheck(RaftNode):
    """(c) Accepts an append whenever it has *some* entry at the previous index, without
    comparing that entry's term with the leader's."""

    def _handle_append(self, m: Message) -> None:
        mine = self.log.term_at(m.last_log_index)
        if mine is not None:
            m = dataclasses.replace(m, last_log_term=mine)
        super()._handle_append(m)


class AppliesEarly(RaftNode):
    """(d) Applies what is durable here, committed or not."""

    def _next_apply_limit(self) -> int:
        return self.log.persisted


class PromisesEarly(RaftNode):
    """(e) Sends votes and acknowledgements with the messages that may leave before the
    fsync, i.e. promises state that is not durable yet."""

    EARLY: ClassVar[tuple[MsgType, ...]] = (MsgType.REQUEST_VOTE_RESPONSE,
                                                 MsgType.APPEND_ENTRIES_RESPONSE)

    def _reply(self, req: Message, **kw: Any) -> None:
        super()._reply(req, **kw)
        m = self._msgs_after[-1]
        if m.accepted and m.type in self.EARLY:
            self._msgs.append(self._msgs_after.pop())


class VotesEarly(PromisesEarly):
    EARLY = (MsgType.REQUEST_VOTE_RESPONSE,)


class AcksEarly(PromisesEarly):
    EARLY = (MsgType.APPEND_ENTRIES_RESPONSE,)


def only_on(node: int, broken: type[RaftNode]) -> Factory:
    """A factory building ``broken`` for ``node`` and the real core for everyone else."""

    def make(node_id: int, params: RaftParams, **kw: Any) -> RaftNode:
        return (broken if node_id == node else RaftNode)(node_id, params, **kw)

    return make
