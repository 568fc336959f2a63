"""Persistence: the interfaces an application implements, in-memory implementations, and
the durable default store (:mod:`nuraft_mesg.storage.sqlite`, see ``docs/storage.md``).

See :mod:`nuraft_mesg.storage.interfaces` for the durability and failure contract shared by
every store, and :mod:`nuraft_mesg.testing` for suites that check an implementation against it.
"""

from nuraft_mesg.storage.interfaces import LogStore, StateMachine, StateManager
from nuraft_mesg.storage.memory import KVStateMachine, MemoryLogStore, MemoryStateManager
from nuraft_mesg.storage.sqlite import (
    SqliteLogStore,
    SqliteStateMachine,
    SqliteStateManager,
    SqliteStore,
)

__all__ = [
    "KVStateMachine",
    "LogStore",
    "MemoryLogStore",
    "MemoryStateManager",
    "SqliteLogStore",
    "SqliteStateMachine",
    "SqliteStateManager",
    "SqliteStore",
    "StateMachine",
    "StateManager",
]
