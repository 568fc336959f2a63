"""Linearizability histories from a :class:`~nuraft_mesg.testing.SimCluster`.

:class:`SimKVClients` runs concurrent simulated clients against one group, each issuing
puts, gets and deletes one at a time through :meth:`SimCluster.write`, and records what they
saw in a :class:`~nuraft_mesg.testing.linearizability.History` on the simulated clock; check
it with :func:`~nuraft_mesg.testing.linearizability.check_kv`.  Reads go through the log
(a ``get <key>`` entry whose commit result is the value, answered by :class:`LogReadKV`), so
they are linearizable without a dedicated read path.

Outcomes: an acknowledged write or read is ``ok``; one that definitely did not take effect
(the node was down so nothing was sent, or the entry was replaced by another leader's:
``TermMismatch``) is ``fail``; anything else (a timeout, a lost leadership, the client's node
crashing) is ``info``: it may still commit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import trio

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing.linearizability import History

if TYPE_CHECKING:  # no import at run time: the cluster module may move
    from nuraft_mesg.testing.cluster import SimCluster, Write

__all__ = ["LogReadKV", "SimKVClients"]


class LogReadKV(KVStateMachine):
    """A :class:`KVStateMachine` whose ``get <key>`` log entries answer the read: the commit
    result is :meth:`query`'s answer at that point of the log (reads through the log)."""

    __slots__ = ()

    def commit(self, index: int, data: bytes) -> bytes:
        result = super().commit(index, data)
        if data.startswith(b"get "):
            try:
                return self.query(data)
            except BadRequest:
                return result  # not a read: echoed like any opaque entry
        return result


_DEFINITE_FAILURES = ("TermMismatch",)


class SimKVClients:
    """Simulated KV clients of one group of ``cluster``, recording into :attr:`history`.

    Keys are ``k0`` .. ``k{keys-1}``; every put writes a unique value.  Operations go
    through the group's current leader (else any node hosting it), as
    :meth:`SimCluster.write` picks.  The group's state machine must answer ``get`` entries
    (:class:`LogReadKV`).
    """

    def __init__(self, cluster: SimCluster, group_id: str, *, keys: int = 3, seed: int = 0,
                 history: History | None = None) -> None:
        self.cluster = cluster
        self.group_id = group_id
        self.keys = [f"k{i}" for i in range(keys)]
        self.rng = random.Random(seed)
        self.history = history if history is not None else History()
        self._values = 0

    async def put(self, client: int | str, key: str, value: str | None = None) -> None:
        if value is None:
            self._values += 1
            value = f"{client}-{self._values}"
        await self._run(client, "put", key, value, b"set %s %s" % (key.encode(),
                                                                   value.encode()))

    async def get(self, client: int | str, key: str) -> None:
        await self._run(client, "get", key, None, KVStateMachine.get_query(key))

    async def delete(self, client: int | str, key: str) -> None:
        await self._run(client, "del", key, None, b"del " + key.encode())

    async def _run(self, client: int | str, kind: str, key: str, value: str | None,
                   data: bytes) -> None:
        h = self.history
        op = h.invoke(client, kind, key, value, time=trio.current_time())
        w = self.cluster.write(self.group_id, data, note=False)
        await w.done.wait()
        now = trio.current_time()
        if w.acked:
            h.ok(op, _read_value(w) if kind == "get" else None, time=now)
        elif w.status == "failed" and (w.error in _DEFINITE_FAILURES
                                       or w.error.endswith(" is down")):
            h.fail(op, time=now)
        else:
            h.info(op, time=now)

    async def client(self, client: int | str, duration: float, *,
                     think: tuple[float, float] = (0.0, 0.3), reads: float = 0.5,
                     deletes: float = 0.1) -> None:
        """One client: random operations, one at a time, for ``duration`` simulated
        seconds (then it finishes the operation in flight)."""
        end = trio.current_time() + duration
        rng = self.rng
        while trio.current_time() < end:
            key = rng.choice(self.keys)
            r = rng.random()
            if r < reads:
                await self.get(client, key)
            elif r < reads + deletes:
                await self.delete(client, key)
            else:
                await self.put(client, key)
            await trio.sleep(rng.uniform(*think))

    async def run(self, clients: int | Sequence[int | str], duration: float, *,
                  think: tuple[float, float] = (0.0, 0.3), reads: float = 0.5,
                  deletes: float = 0.1) -> None:
        """Run ``clients`` (a count, or their names) concurrently for ``duration``."""
        names: list[int | str] = (list(range(clients)) if isinstance(clients, int)
                                  else list(clients))
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(partial(self.client, name, duration, think=think,
                                           reads=reads, deletes=deletes))


def _read_value(w: Write) -> str | None:
    if w.result is None:
        raise BadRequest(f"read {w.data!r} was acknowledged without a result")
    return KVStateMachine.decode_get(w.result)
