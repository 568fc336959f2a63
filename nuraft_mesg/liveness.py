"""Node-level liveness for quiet groups: who is quiet, which leaders' nodes to ping, and
what to do when one stops answering.

A quiet group (``RaftParams.quiesce_after_ms``) sends no heartbeats, so a follower cannot
tell a dead leader from an idle one.  This module replaces per-group heartbeats with one ping
per leader *node*, and turns a broken connection (``peer_lost``) into a probe.  Separate from
:mod:`nuraft_mesg.manager` because it is a self-contained policy with its own state; the
Manager only starts :meth:`Liveness.run` in its infrastructure nursery and forwards the
transport's ``peer_lost``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from nuraft_mesg.group import RaftGroup
from nuraft_mesg.manager_config import ManagerConfig
from nuraft_mesg.transport.base import Transport, TransportError

__all__ = ["Liveness"]


class Liveness:
    """Quiet-group bookkeeping and the pings that stand in for their heartbeats."""

    def __init__(self, *, config: ManagerConfig, transport: Transport,
                 groups: Mapping[str, RaftGroup], log: logging.Logger) -> None:
        """``groups``: the Manager's live map of hosted groups (read when a leader looks
        dead)."""
        self.config = config
        self.server_uuid = config.server_uuid
        self.transport = transport
        self.log = log
        self._groups = groups
        self._quiet_count = 0
        self._quiet_followers: dict[str, set[RaftGroup]] = {}
        """Leader uuid -> the quiet groups here that follow it (and so rest on its pings)."""
        self._watched: set[str] = set()
        """Peers whose liveness task runs."""
        self._watch_more = trio.Event()
        self._probing: set[str] = set()
        """Peers being probed after a peer_lost."""

    @property
    def quiet_groups(self) -> int:
        """Groups quiet on this node now (leaders and followers)."""
        return self._quiet_count

    def on_group_quiet(self, group: RaftGroup, leader: str, quiet: bool) -> None:
        """A group went quiet or woke; a quiet follower (``leader`` set) rests on pings to
        its leader's node."""
        self._quiet_count += 1 if quiet else -1
        if not leader:
            return
        if quiet:
            self._quiet_followers.setdefault(leader, set()).add(group)
            if leader not in self._watched:
                self._watch_more.set()
        else:
            followers = self._quiet_followers.get(leader)
            if followers is not None:
                followers.discard(group)
                if not followers:
                    del self._quiet_followers[leader]

    async def run(self) -> None:
        """Start a watcher for every peer that leads a quiet group here (each stops when
        no quiet group here rests on it any more)."""
        async with trio.open_nursery() as nursery:
            while True:
                await self._watch_more.wait()
                self._watch_more = trio.Event()
                for peer in list(self._quiet_followers):
                    if peer not in self._watched:
                        self._watched.add(peer)
                        nursery.start_soon(self._watch_peer, peer)

    async def _watch_peer(self, peer: str) -> None:
        """Ping ``peer`` every ``liveness_interval`` while quiet groups here follow it; a
        ping unanswered within ``liveness_timeout`` makes its groups here campaign soon
        (which wakes them, so the watch ends)."""
        interval = self.config.liveness_interval
        try:
            while self._quiet_followers.get(peer):
                start = trio.current_time()
                if not await self._ping(peer):
                    self._leader_lost(peer, "ping failed")
                await trio.sleep_until(start + interval)
        finally:
            self._watched.discard(peer)

    async def _ping(self, peer: str) -> bool:
        try:
            await self.transport.ping(peer, timeout=self.config.liveness_timeout)
        except TransportError as exc:
            self.log.debug("ping %s failed: %s", peer, exc)
            return False
        except Exception:  # a transport bug: count it as a failed ping
            self.log.exception("ping %s raised an unexpected error", peer)
            return False
        return True

    def peer_lost(self, peer: str, nursery: trio.Nursery) -> None:
        """The transport saw the connection to or from ``peer`` end abruptly (the Manager
        checked that it runs).  Probe it once, in ``nursery`` (at most one probe per peer
        at a time); if the probe fails, every group here that follows it campaigns soon."""
        if (not self.transport.supports_ping
                or peer == self.server_uuid or peer in self._probing):
            return
        self._probing.add(peer)
        nursery.start_soon(self._probe_lost, peer)

    async def _probe_lost(self, peer: str) -> None:
        try:
            if not await self._ping(peer):
                self._leader_lost(peer, "connection lost, ping failed")
        finally:
            self._probing.discard(peer)

    def _leader_lost(self, peer: str, why: str) -> None:
        """``peer`` looks dead: every group here that it leads (and we follow) campaigns
        within half its lower election timeout (quiet ones wake)."""
        count = sum(1 for g in list(self._groups.values()) if g.leader_lost(peer))
        if count:
            self.log.info("peer %s looks dead (%s): %d group(s) it led here campaign soon",
                          peer, why, count)

