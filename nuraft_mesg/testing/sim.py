"""An in-memory, deterministic network for Managers: :class:`SimNetwork` and its
:class:`SimTransport`.

Every node gets a :class:`SimTransport` (a :class:`~nuraft_mesg.transport.base.Transport`) on
one shared :class:`SimNetwork`.  A RaftStep travels as two legs, request and reply, each over
the *ordered* link it uses (``src -> dst`` for the request, ``dst -> src`` for the reply).  Each
link has a :class:`LinkState`:

* ``up``: a link that is down loses everything sent over it (a partition: the caller hears
  nothing and its deadline expires, as with a black-holed TCP connection);
* ``drop``: probability that a leg is lost;
* ``duplicate``: probability that a request is delivered twice (the receiver handles both
  copies; only the first reply to come back is used);
* ``delay``: each leg takes a uniformly random time in ``[low, high]`` seconds, independently,
  so messages overtake each other; a leg slower than the caller's deadline arrives after the
  caller gave up, as a late request or a lost reply.

A request to a node that is not serving (crashed) fails with UNAVAILABLE after the link delay
(connection refused).  A node that crashes while handling a request answers UNAVAILABLE
(connection reset).  The handler runs under the caller's deadline, as gRPC's does.  When a
node stops serving, every other serving node whose handler is a
:class:`~nuraft_mesg.transport.base.PeerWatcher` is told ``peer_lost`` after the link delay
(as a TCP reset would tell it), unless the link from the stopped node is down.

:meth:`SimTransport.ping` (node-level liveness) travels the same links both ways: it fails
with UNAVAILABLE when the peer is not serving, and times out when a leg is lost (down link
or random drop).  Pings are counted apart (:attr:`NetworkStatistics.pings`), not as legs,
and filters do not see them.

Partitions are expressed on top of links: :meth:`SimNetwork.partition` (symmetric, any number
of sides), :meth:`SimNetwork.cut` (one way, any node sets), :meth:`SimNetwork.isolate`,
:meth:`SimNetwork.heal`.  Every Raft group on a node shares its node's links, so a partition
hits all groups at once, as a real network fault does.  Filters (:meth:`SimNetwork.add_filter`)
drop chosen messages, for scripted scenarios.

Determinism: every random choice comes from one ``random.Random`` seeded at construction, and
the network only ever waits on trio's clock.  Run it under ``trio.testing.MockClock`` with
``autojump_threshold=0`` (and with trio's deterministic scheduling, which importing Hypothesis
turns on) and a run is a pure function of its seed; simulated hours take seconds.

Use it as an async context manager (it owns the nursery in which messages are in flight)::

    async with SimNetwork(seed=7) as net:
        transport = SimTransport(net, node_uuid)
        async with Manager(config, app, transport=transport) as mgr:
            ...
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

import trio

from nuraft_mesg.transport.base import (
    PeerWatcher,
    Status,
    StepError,
    StepHandler,
    Transport,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope, decode_group_msg, encode_group_msg

__all__ = [
    "LinkState",
    "MessageFilter",
    "NetworkStatistics",
    "SimMessage",
    "SimNetwork",
    "SimTransport",
]


@dataclass(frozen=True, slots=True)
class LinkState:
    """The behaviour of one ordered link ``src -> dst``."""

    up: bool = True
    drop: float = 0.0
    """Probability that a message (a request or a reply) is lost."""
    duplicate: float = 0.0
    """Probability that a request is delivered twice."""
    delay: tuple[float, float] = (0.001, 0.005)
    """Bounds, in seconds, of the uniformly random transit time of each message."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.drop <= 1.0 and 0.0 <= self.duplicate <= 1.0):
            raise ValueError("drop and duplicate are probabilities in [0, 1]")
        low, high = self.delay
        if not 0.0 <= low <= high:
            raise ValueError("delay must be (low, high) with 0 <= low <= high")


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One leg of a RaftStep, as filters and the trace see it."""

    src: str
    dst: str
    envelope: GroupEnvelope | None
    """The request or reply; None for an error reply (``error`` is set)."""
    error: TransportError | None = None
    is_reply: bool = False

    def describe(self, names: Callable[[str], str] = lambda s: s[:8]) -> str:
        arrow = f"{names(self.src)}->{names(self.dst)}"
        if self.envelope is None:
            return f"{arrow} error {self.error}"
        m = self.envelope.message
        kind = m.type.name.lower().replace("_request", "").replace("_response", "-resp")
        if m.type.is_request:
            extra = f" prev={m.last_log_index}/{m.last_log_term} commit={m.commit_index}"
            if m.entries:
                extra += f" entries={len(m.entries)}@{m.entries[-1].term}"
        else:
            extra = f" ok={m.accepted} next={m.next_index}"
        return f"{arrow} {kind} t{m.term}{extra}"


MessageFilter = Callable[[SimMessage], bool]
"""Returns True to drop the message."""


@dataclass(slots=True)
class NetworkStatistics:
    sent: int = 0
    """Legs sent (requests and replies)."""
    delivered: int = 0
    lost: int = 0
    """Legs lost: link down, random drop or filter."""
    duplicated: int = 0
    refused: int = 0
    """Requests that found no server (the destination was down)."""
    pings: int = 0
    """Pings sent (not counted in ``sent``)."""
    pings_failed: int = 0
    resets: int = 0
    """``peer_lost`` notices delivered (a serving node saw a peer stop)."""


@dataclass(slots=True)
class _Endpoint:
    address: str
    handler: StepHandler
    nursery: trio.Nursery


@dataclass(slots=True, eq=False)
class _Call:
    """One outstanding RaftStep on the caller's side."""

    done: trio.Event = field(default_factory=trio.Event)
    result: GroupEnvelope | TransportError | None = None
    abandoned: bool = False

    def resolve(self, result: GroupEnvelope | TransportError) -> bool:
        if self.done.is_set() or self.abandoned:
            return False
        self.result = result
        self.done.set()
        return True


class SimNetwork:
    """Simulated links between named endpoints (node uuids).  See the module doc.

    Args:
        seed: seeds the network's only source of randomness (or pass a ``random.Random``).
        default: the state of every link not configured otherwise.
        wire: encode and decode every message with the real protobuf codec (slower; checks
            that everything the runtime sends survives the wire format).
        trace_size: how many recent messages :attr:`trace` keeps.
    """

    def __init__(
        self,
        *,
        seed: int | random.Random = 0,
        default: LinkState | None = None,
        wire: bool = False,
        trace_size: int = 200,
    ) -> None:
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.default = default or LinkState()
        self._initial_default = self.default
        self.wire = wire
        self.stats = NetworkStatistics()
        self.trace: deque[tuple[float, SimMessage, str]] = deque(maxlen=trace_size)
        """Recent legs: (time, message, fate) with fate "sent", "lost", "dup" or "refused"."""
        self._links: dict[tuple[str, str], LinkState] = {}
        self._nodes: list[str] = []
        self._endpoints: dict[str, _Endpoint] = {}
        self._filters: list[MessageFilter] = []
        self._nursery: trio.Nursery | None = None
        self._cm: object = None
        self.on_deliver: Callable[[str, str, GroupEnvelope], None] | None = None
        """Observer hook: ``(dst, group_id, envelope)`` for every request handed to a server
        and every reply handed back to its caller (``dst`` is the receiving node)."""

    # ==========================================================================================
    # Lifecycle
    # ==========================================================================================
    async def __aenter__(self) -> SimNetwork:
        if self._cm is not None:
            raise RuntimeError("a SimNetwork can be entered only once")
        cm = trio.open_nursery()
        self._cm = cm
        self._nursery = await cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        nursery, cm = self._nursery, self._cm
        assert nursery is not None and cm is not None
        self._nursery = None
        nursery.cancel_scope.cancel()  # messages still in flight are lost
        return await cm.__aexit__(exc_type, exc, tb)  # type: ignore[attr-defined, no-any-return]

    # ==========================================================================================
    # Topology and faults
    # ==========================================================================================
    def add_node(self, address: str) -> None:
        """Make ``address`` known (for :meth:`partition` / :meth:`isolate`).  Transports
        register themselves; calling it again is harmless."""
        if address not in self._nodes:
            self._nodes.append(address)

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def link(self, src: str, dst: str) -> LinkState:
        return self._links.get((src, dst), self.default)

    def set_link(
        self,
        src: str,
        dst: str,
        *,
        up: bool | None = None,
        drop: float | None = None,
        duplicate: float | None = None,
        delay: tuple[float, float] | None = None,
        symmetric: bool = False,
    ) -> None:
        """Change some properties of the link ``src -> dst`` (and ``dst -> src`` too if
        ``symmetric``)."""
        changes: dict[str, object] = {}
        if up is not None:
            changes["up"] = up
        if drop is not None:
            changes["drop"] = drop
        if duplicate is not None:
            changes["duplicate"] = duplicate
        if delay is not None:
            changes["delay"] = delay
        pairs = [(src, dst), (dst, src)] if symmetric else [(src, dst)]
        for pair in pairs:
            self._links[pair] = dataclasses.replace(self.link(*pair), **changes)  # type: ignore[arg-type]

    def configure(
        self,
        *,
        drop: float | None = None,
        duplicate: float | None = None,
        delay: tuple[float, float] | None = None,
    ) -> None:
        """Change drop / duplicate / delay on every link (the default and every configured
        one), leaving up/down as it is."""
        changes: dict[str, object] = {}
        if drop is not None:
            changes["drop"] = drop
        if duplicate is not None:
            changes["duplicate"] = duplicate
        if delay is not None:
            changes["delay"] = delay
        self.default = dataclasses.replace(self.default, **changes)  # type: ignore[arg-type]
        for pair, state in list(self._links.items()):
            self._links[pair] = dataclasses.replace(state, **changes)  # type: ignore[arg-type]

    def cut(self, sources: Iterable[str], destinations: Iterable[str]) -> None:
        """One-way partition: everything from any of ``sources`` to any of ``destinations``
        is lost (the other direction is untouched)."""
        dsts = list(destinations)
        for s in sources:
            for d in dsts:
                if s != d:
                    self.set_link(s, d, up=False)

    def partition(self, *sides: Iterable[str]) -> None:
        """Symmetric partition: cut every link between nodes on different sides.  Known
        nodes on no side are isolated.  Links within a side are brought up."""
        side_of: dict[str, int] = {}
        for k, side in enumerate(sides):
            for n in side:
                self.add_node(n)
                side_of[n] = k
        for a in self._nodes:
            for b in self._nodes:
                if a == b:
                    continue
                sa, sb = side_of.get(a, -1), side_of.get(b, -1)
                self.set_link(a, b, up=sa == sb and sa != -1)

    def isolate(self, node: str) -> None:
        """Cut every link to and from ``node``."""
        others = [n for n in self._nodes if n != node]
        self.cut([node], others)
        self.cut(others, [node])

    def heal(self, *, reset: bool = False) -> None:
        """Bring every link up.  ``reset`` also puts drop, duplicate and delay back to the
        values the network was created with, and removes every filter."""
        if reset:
            self._links.clear()
            self._filters.clear()
            self.default = self._initial_default
            return
        for pair, state in list(self._links.items()):
            self._links[pair] = dataclasses.replace(state, up=True)

    def add_filter(self, fn: MessageFilter) -> MessageFilter:
        """Drop every message for which ``fn`` returns True (requests and replies); returns
        ``fn`` for :meth:`remove_filter`."""
        self._filters.append(fn)
        return fn

    def remove_filter(self, fn: MessageFilter) -> None:
        self._filters.remove(fn)

    def is_up(self, address: str) -> bool:
        """Whether ``address`` is serving."""
        return address in self._endpoints

    # ==========================================================================================
    # Transport side (used by SimTransport)
    # ==========================================================================================
    def _attach(self, address: str, handler: StepHandler, nursery: trio.Nursery) -> _Endpoint:
        if address in self._endpoints:
            raise RuntimeError(f"{address} is already serving")
        self.add_node(address)
        ep = _Endpoint(address, handler, nursery)
        self._endpoints[address] = ep
        return ep

    def _detach(self, ep: _Endpoint) -> None:
        if self._endpoints.get(ep.address) is ep:
            del self._endpoints[ep.address]

    def _spawn(self, fn: Callable[..., object], *args: object) -> None:
        if self._nursery is None:
            return  # the network is shutting down: the message is lost
        self._nursery.start_soon(fn, *args)  # type: ignore[arg-type]

    def _fate(self, msg: SimMessage, *, request: bool) -> int:
        """How many copies of ``msg`` arrive (0, 1 or 2); records the trace."""
        self.stats.sent += 1
        now = trio.current_time()
        state = self.link(msg.src, msg.dst)
        # Always draw both numbers, so that a filter or a down link does not shift the rest
        # of the run's random choices.
        lost_roll = self.rng.random()
        dup_roll = self.rng.random()
        if not state.up or lost_roll < state.drop or any(f(msg) for f in self._filters):
            self.stats.lost += 1
            self.trace.append((now, msg, "lost"))
            return 0
        if request and dup_roll < state.duplicate:
            self.stats.duplicated += 1
            self.trace.append((now, msg, "dup"))
            return 2
        self.trace.append((now, msg, "sent"))
        return 1

    def _delay(self, src: str, dst: str) -> float:
        low, high = self.link(src, dst).delay
        return self.rng.uniform(low, high)

    def _transcode(self, env: GroupEnvelope, *, reply: bool) -> GroupEnvelope:
        if not self.wire:
            return env
        if reply:
            data = encode_group_msg(env.group_id, "", "", env.message, env.dest_addr)
        else:
            data = encode_group_msg(env.group_id, env.group_type, env.intended_addr, env.message)
        decoded = decode_group_msg(data)
        if env.quiesce:  # a batch-level hint, carried beside the RaftGroupMsg on the wire
            decoded = dataclasses.replace(decoded, quiesce=True)
        return decoded

    # -- node-level liveness -----------------------------------------------------------------
    def _leg_lost(self, src: str, dst: str) -> bool:
        state = self.link(src, dst)
        return not state.up or (state.drop > 0 and self.rng.random() < state.drop)

    async def _ping(
        self,
        src: str,
        dst: str,
        timeout: float,  # noqa: ASYNC109 - as in Transport.ping
    ) -> None:
        self.stats.pings += 1
        if not timeout > 0:
            self.stats.pings_failed += 1
            raise TransportError(Status.DEADLINE_EXCEEDED, f"no time left to ping {dst}")
        with trio.move_on_at(trio.current_time() + timeout):
            try:
                if self._leg_lost(src, dst):
                    await trio.sleep_forever()
                await trio.sleep(self._delay(src, dst))
                if dst not in self._endpoints:
                    raise TransportError(Status.UNAVAILABLE, f"connection to {dst} refused")
                if self._leg_lost(dst, src):
                    await trio.sleep_forever()
                await trio.sleep(self._delay(dst, src))
            except TransportError:
                self.stats.pings_failed += 1
                raise
            return
        self.stats.pings_failed += 1
        raise TransportError(Status.DEADLINE_EXCEEDED,
                             f"ping to {dst} timed out after {timeout:g}s")

    def _stopped_serving(self, address: str) -> None:
        """``address`` stopped serving: its connections reset, and every serving node that
        watches peers hears of it after the link delay (unless the link is down)."""
        for other in list(self._endpoints):
            if other != address and self.link(address, other).up:
                self._spawn(self._reset_leg, address, other, self._delay(address, other))

    async def _reset_leg(self, address: str, dst: str, delay: float) -> None:
        await trio.sleep(delay)
        ep = self._endpoints.get(dst)
        if ep is not None and isinstance(ep.handler, PeerWatcher):
            self.stats.resets += 1
            ep.handler.peer_lost(address)

    async def _call(
        self,
        src: str,
        dst: str,
        request: GroupEnvelope,
        timeout: float,  # noqa: ASYNC109 - a RaftStep deadline, as in Transport.call
    ) -> GroupEnvelope:
        if not request.message.type.is_request:
            raise TransportError(
                Status.INVALID_ARGUMENT, f"{request.message.type.name} is not a request"
            )
        if not timeout > 0:
            raise TransportError(Status.DEADLINE_EXCEEDED, f"no time left for RaftStep to {dst}")
        if not request.intended_addr:
            request = dataclasses.replace(request, intended_addr=dst)
        try:
            request = self._transcode(request, reply=False)
        except Exception as exc:
            raise TransportError(Status.INVALID_ARGUMENT, f"cannot encode: {exc}") from None
        deadline = trio.current_time() + timeout
        call = _Call()
        copies = self._fate(SimMessage(src, dst, request), request=True)
        for _ in range(copies):
            self._spawn(self._request_leg, src, dst, request, call, deadline,
                        self._delay(src, dst))
        with trio.move_on_at(deadline):
            await call.done.wait()
            result = call.result
            if isinstance(result, TransportError):
                raise result
            assert result is not None
            return result
        call.abandoned = True
        raise TransportError(
            Status.DEADLINE_EXCEEDED, f"RaftStep to {dst} timed out after {timeout:g}s"
        )

    async def _request_leg(
        self,
        src: str,
        dst: str,
        request: GroupEnvelope,
        call: _Call,
        deadline: float,
        delay: float,
    ) -> None:
        await trio.sleep(delay)
        ep = self._endpoints.get(dst)
        if ep is None:
            self.stats.refused += 1
            self.trace.append((trio.current_time(), SimMessage(src, dst, request), "refused"))
            call.resolve(TransportError(Status.UNAVAILABLE, f"connection to {dst} refused"))
            return
        self.stats.delivered += 1
        ep.nursery.start_soon(self._serve_one, ep, src, request, call, deadline)

    async def _serve_one(
        self, ep: _Endpoint, src: str, request: GroupEnvelope, call: _Call, deadline: float
    ) -> None:
        """Runs in the server's nursery, so a crash of the server cancels it."""
        result: GroupEnvelope | TransportError = TransportError(
            Status.UNAVAILABLE, f"connection to {ep.address} reset"
        )
        try:
            if request.intended_addr != ep.address:
                result = TransportError(
                    Status.INVALID_ARGUMENT,
                    f"intended addr: [{request.intended_addr}], our addr: [{ep.address}]",
                )
                return
            if self.on_deliver is not None:
                self.on_deliver(ep.address, request.group_id, request)
            with trio.move_on_at(deadline) as scope:
                try:
                    reply = await ep.handler.raft_step(request)
                except StepError as exc:
                    status = exc.status if exc.status != Status.OK else Status.INTERNAL
                    result = TransportError(status, exc.message)
                except Exception as exc:
                    result = TransportError(
                        Status.INTERNAL, f"RaftStep failed: {type(exc).__name__}: {exc}"
                    )
                else:
                    if reply.message.type.is_request:
                        result = TransportError(
                            Status.INTERNAL, f"reply is a {reply.message.type.name}"
                        )
                    else:
                        # As on the wire: the reply carries the request's group id.
                        result = GroupEnvelope(request.group_id, "", "", reply.message,
                                               dest_addr=reply.dest_addr)
            if scope.cancelled_caught:
                result = TransportError(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")
        finally:
            # Also on cancellation (the server crashed): the caller hears a reset.
            self._send_reply(ep.address, src, request, result, call)

    def _send_reply(
        self,
        src: str,
        dst: str,
        request: GroupEnvelope,
        result: GroupEnvelope | TransportError,
        call: _Call,
    ) -> None:
        if isinstance(result, GroupEnvelope):
            try:
                result = self._transcode(result, reply=True)
            except Exception as exc:
                result = TransportError(Status.INTERNAL, f"cannot encode reply: {exc}")
        msg = (SimMessage(src, dst, result, is_reply=True) if isinstance(result, GroupEnvelope)
               else SimMessage(src, dst, None, error=result, is_reply=True))
        if self._fate(msg, request=False):
            self._spawn(self._reply_leg, dst, request, result, call, self._delay(src, dst))

    async def _reply_leg(
        self,
        dst: str,
        request: GroupEnvelope,
        result: GroupEnvelope | TransportError,
        call: _Call,
        delay: float,
    ) -> None:
        await trio.sleep(delay)
        if call.done.is_set() or call.abandoned:
            return  # a duplicate's reply, or the caller gave up
        if isinstance(result, GroupEnvelope) and self.on_deliver is not None:
            self.on_deliver(dst, request.group_id, result)
        self.stats.delivered += 1
        call.resolve(result)


class SimTransport(Transport):
    """One node's :class:`~nuraft_mesg.transport.base.Transport` on a :class:`SimNetwork`.

    ``address`` is the node's uuid (what peers call it by).  :meth:`serve` reports port 0.
    It can ping (:attr:`supports_ping`), so groups over it go quiet when idle.
    """

    supports_ping = True

    def __init__(self, network: SimNetwork, address: str) -> None:
        self.network = network
        self.address = address
        self._closed = False
        network.add_node(address)

    async def serve(
        self,
        handler: StepHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            ep = self.network._attach(self.address, handler, nursery)
            try:
                task_status.started(0)
                await trio.sleep_forever()
            finally:
                self.network._detach(ep)
                self.network._stopped_serving(self.address)
                nursery.cancel_scope.cancel()

    async def call(
        self,
        peer: str,
        request: GroupEnvelope,
        *,
        timeout: float,  # noqa: ASYNC109 - mirrors the Transport interface
    ) -> GroupEnvelope:
        if self._closed:
            raise TransportError(Status.UNAVAILABLE, "transport is closed")
        return await self.network._call(self.address, peer, request, timeout)

    async def ping(
        self,
        peer: str,
        *,
        timeout: float,  # noqa: ASYNC109 - mirrors the Transport interface
    ) -> None:
        if self._closed:
            raise TransportError(Status.UNAVAILABLE, "transport is closed")
        await self.network._ping(self.address, peer, timeout)

    async def aclose(self) -> None:
        self._closed = True

