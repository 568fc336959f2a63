"""Network faults for real nodes on loopback: partitions and one-way link cuts.

:class:`NetworkFaults` is one shared fault plan; :meth:`NetworkFaults.wrap` wraps each node's
:class:`~nuraft_mesg.transport.base.Transport` in a :class:`FaultyTransport` that consults it
on every call the node *sends* (RaftStep and data-service calls)::

    faults = NetworkFaults()
    async with LocalCluster.open(3, transport_wrapper=faults.wrap) as cluster:
        a, b, c = (n.uuid for n in cluster.nodes)
        faults.partition([a])          # a | b, c
        ...
        faults.heal()

A cut link ``src -> dst`` means that nothing ``src`` sends reaches ``dst``:

* a call from ``src`` to ``dst`` fails at once with ``TransportError(UNAVAILABLE)``, and is
  never delivered;
* a call from ``dst`` to ``src`` is delivered and processed, but its reply is lost: the caller
  gets ``TransportError(UNAVAILABLE)`` (as a real one-way loss would look to it, only sooner
  than a deadline).

:meth:`NetworkFaults.partition` cuts both directions between sides, so nothing crosses.  A
call already in flight when a link is cut fails when it returns.

Only traffic sent through a wrapped transport is affected: every node of a
:class:`~nuraft_mesg.testing.local.LocalCluster` built with ``transport_wrapper=faults.wrap``
is, but a client with its own, unwrapped transport still reaches a partitioned node.
Failing fast with UNAVAILABLE (rather than hanging until the deadline) keeps tests quick; Raft
treats both the same way (a lost message, retried on its own timers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from nuraft_mesg.transport.base import (
    DataRequest,
    Status,
    StepHandler,
    Transport,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope

__all__ = ["FaultyTransport", "NetworkFaults"]


class NetworkFaults:
    """The links currently cut between nodes (by uuid), shared by their FaultyTransports.

    Only touch it from the trio thread that runs the nodes (it has no locks).
    """

    def __init__(self) -> None:
        self._cut: set[tuple[str, str]] = set()
        self.nodes: list[str] = []
        """Every uuid wrapped so far, in order (the universe of :meth:`partition`)."""
        self.refused = 0
        """Calls failed because of a cut link (sent, or whose reply was lost)."""

    # -- wiring ------------------------------------------------------------------------------
    def wrap(self, server_uuid: str, transport: Transport) -> FaultyTransport:
        """Wrap one node's transport; usable as LocalCluster's ``transport_wrapper``."""
        if server_uuid not in self.nodes:
            self.nodes.append(server_uuid)
        return FaultyTransport(transport, server_uuid, self)

    # -- the plan ----------------------------------------------------------------------------
    def is_cut(self, src: str, dst: str) -> bool:
        """True if what ``src`` sends does not reach ``dst``."""
        return (src, dst) in self._cut

    @property
    def cut_links(self) -> frozenset[tuple[str, str]]:
        """Every cut ``(src, dst)`` link."""
        return frozenset(self._cut)

    def block(self, src: str, dst: str, *, both_ways: bool = False) -> None:
        """Cut the link ``src -> dst`` (and ``dst -> src`` with ``both_ways``)."""
        if src == dst:
            raise ValueError("a node cannot be cut from itself")
        self._cut.add((src, dst))
        if both_ways:
            self._cut.add((dst, src))

    def unblock(self, src: str, dst: str, *, both_ways: bool = False) -> None:
        """Restore the link ``src -> dst`` (and ``dst -> src`` with ``both_ways``)."""
        self._cut.discard((src, dst))
        if both_ways:
            self._cut.discard((dst, src))

    def partition(self, *sides: Iterable[str]) -> None:
        """Cut every link between nodes of different sides, both ways.

        Each argument is one side (an iterable of uuids); the known nodes (:attr:`nodes`)
        listed in no side form one more side, "the rest".  ``partition([a])`` isolates
        ``a``; ``partition([a, b])`` splits ``a, b`` from the others; ``partition([a], [b])``
        makes three sides.  Cuts add up with earlier ones until :meth:`heal`.
        """
        groups = [list(dict.fromkeys(side)) for side in sides]
        listed = [u for side in groups for u in side]
        if len(listed) != len(set(listed)):
            raise ValueError("a node is on two sides of the partition")
        rest = [u for u in self.nodes if u not in set(listed)]
        if rest:
            groups.append(rest)
        for i, side in enumerate(groups):
            for other in groups[i + 1:]:
                for a in side:
                    for b in other:
                        self.block(a, b, both_ways=True)

    def heal(self) -> None:
        """Restore every link."""
        self._cut.clear()


class FaultyTransport(Transport):
    """A transport that fails RaftSteps over links its :class:`NetworkFaults` has cut.

    The server side is the wrapped transport's own (unchanged); see the module doc for what a
    cut does to a call.  Attributes it does not define are looked up on the wrapped transport.
    """

    def __init__(self, inner: Transport, server_uuid: str, faults: NetworkFaults) -> None:
        self.inner = inner
        self.server_uuid = server_uuid
        self.faults = faults

    async def serve(
        self,
        handler: StepHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.inner.serve(handler, task_status=task_status)

    async def call(
        self,
        peer: str,
        request: GroupEnvelope,
        *,
        timeout: float,  # noqa: ASYNC109 - a gRPC deadline travels with the call
    ) -> GroupEnvelope:
        self._check_out(peer)
        reply = await self.inner.call(peer, request, timeout=timeout)
        self._check_back(peer)
        return reply

    async def data_call(
        self,
        peer: str,
        request: DataRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - a gRPC deadline travels with the call
    ) -> bytes:
        self._check_out(peer)
        reply = await self.inner.data_call(peer, request, timeout=timeout)
        self._check_back(peer)
        return reply

    def _check_out(self, peer: str) -> None:
        me = self.server_uuid
        if self.faults.is_cut(me, peer):
            self.faults.refused += 1
            raise TransportError(Status.UNAVAILABLE, f"link {me} -> {peer} is cut")

    def _check_back(self, peer: str) -> None:
        me = self.server_uuid
        if self.faults.is_cut(peer, me) or self.faults.is_cut(me, peer):
            self.faults.refused += 1
            raise TransportError(Status.UNAVAILABLE, f"link {peer} -> {me} is cut: reply lost")

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally: extensions of the wrapped transport.
        if name == "inner":  # not set yet (during unpickling/copying): avoid recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
