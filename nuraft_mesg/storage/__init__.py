"""Persistence: the interfaces an application implements, and in-memory implementations.

See :mod:`nuraft_mesg.storage.interfaces` for the durability and failure contract shared by
every store, and :mod:`nuraft_mesg.testing` for suites that check an implementation against it.
"""

from nuraft_mesg.storage.interfaces import LogStore, StateMachine, StateManager
from nuraft_mesg.storage.memory import KVStateMachine, MemoryLogStore, MemoryStateManager

__all__ = [
    "KVStateMachine",
    "LogStore",
    "MemoryLogStore",
    "MemoryStateManager",
    "StateMachine",
    "StateManager",
]
