"""nuraft_mesg: many Raft groups per process behind one gRPC service, on trio.

The public API is re-exported here; submodules are organised by layer:

* :mod:`nuraft_mesg.raft` -- the sans-IO Raft core (no trio, no sockets, no clock);
* :mod:`nuraft_mesg.storage` -- the persistence interfaces and in-memory implementations;
* :mod:`nuraft_mesg.transport` -- the wire codec, the purerpc transport, per-peer queues, TLS
  and token authentication;
* :mod:`nuraft_mesg.manager` -- the Manager and group contexts (the trio runtime);
* :mod:`nuraft_mesg.testing` -- harnesses for testing code built on this library.

Importing the package is cheap: the names below load on first use (PEP 562), so that
``import nuraft_mesg.raft`` pulls in neither trio nor purerpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "InMemoryApplication": "nuraft_mesg.app",
    "ExternalClient": "nuraft_mesg.client",
    "DnsApplication": "nuraft_mesg.discovery",
    "PeersFileApplication": "nuraft_mesg.discovery",
    "ALL": "nuraft_mesg.data_service",
    "ANY": "nuraft_mesg.data_service",
    "FOLLOWER": "nuraft_mesg.data_service",
    "LEADER": "nuraft_mesg.data_service",
    "RoleRegex": "nuraft_mesg.data_service",
    "BadRequest": "nuraft_mesg.errors",
    "Cancelled": "nuraft_mesg.errors",
    "CannotRemoveLeader": "nuraft_mesg.errors",
    "ConfigChanging": "nuraft_mesg.errors",
    "Failed": "nuraft_mesg.errors",
    "ResultUnknown": "nuraft_mesg.errors",
    "StorageError": "nuraft_mesg.errors",
    "SessionExpired": "nuraft_mesg.errors",
    "NotLeader": "nuraft_mesg.errors",
    "QueryNotSupported": "nuraft_mesg.errors",
    "RaftError": "nuraft_mesg.errors",
    "RaftTimeout": "nuraft_mesg.errors",
    "ResultCode": "nuraft_mesg.errors",
    "ServerAlreadyExists": "nuraft_mesg.errors",
    "ServerIsJoining": "nuraft_mesg.errors",
    "ServerIsLeaving": "nuraft_mesg.errors",
    "ServerNotFound": "nuraft_mesg.errors",
    "TermMismatch": "nuraft_mesg.errors",
    "GroupStatistics": "nuraft_mesg.group",
    "PeerInfo": "nuraft_mesg.group",
    "ReplicaConfig": "nuraft_mesg.group",
    "GroupContext": "nuraft_mesg.manager",
    "Manager": "nuraft_mesg.manager",
    "ManagerConfig": "nuraft_mesg.manager",
    "MessagingApplication": "nuraft_mesg.manager",
    "to_server_id": "nuraft_mesg.manager",
    "RaftParams": "nuraft_mesg.raft.params",
    "ClusterConfig": "nuraft_mesg.raft.types",
    "ServerConfig": "nuraft_mesg.raft.types",
    "SnapshotMeta": "nuraft_mesg.raft.types",
    "LogStore": "nuraft_mesg.storage.interfaces",
    "StateMachine": "nuraft_mesg.storage.interfaces",
    "StateManager": "nuraft_mesg.storage.interfaces",
    "KVStateMachine": "nuraft_mesg.storage.memory",
    "ClientSession": "nuraft_mesg.sessions",
    "SessionStateMachine": "nuraft_mesg.sessions",
    "MemoryLogStore": "nuraft_mesg.storage.memory",
    "MemoryStateManager": "nuraft_mesg.storage.memory",
    "StaticTokenClient": "nuraft_mesg.transport.security",
    "StaticTokenVerifier": "nuraft_mesg.transport.security",
    "TlsConfig": "nuraft_mesg.transport.security",
    "TokenClient": "nuraft_mesg.transport.security",
    "TokenVerifier": "nuraft_mesg.transport.security",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from nuraft_mesg.app import InMemoryApplication as InMemoryApplication
    from nuraft_mesg.client import ExternalClient as ExternalClient
    from nuraft_mesg.data_service import ALL as ALL
    from nuraft_mesg.data_service import ANY as ANY
    from nuraft_mesg.data_service import FOLLOWER as FOLLOWER
    from nuraft_mesg.data_service import LEADER as LEADER
    from nuraft_mesg.data_service import RoleRegex as RoleRegex
    from nuraft_mesg.discovery import DnsApplication as DnsApplication
    from nuraft_mesg.discovery import PeersFileApplication as PeersFileApplication
    from nuraft_mesg.errors import BadRequest as BadRequest
    from nuraft_mesg.errors import Cancelled as Cancelled
    from nuraft_mesg.errors import CannotRemoveLeader as CannotRemoveLeader
    from nuraft_mesg.errors import ConfigChanging as ConfigChanging
    from nuraft_mesg.errors import Failed as Failed
    from nuraft_mesg.errors import NotLeader as NotLeader
    from nuraft_mesg.errors import QueryNotSupported as QueryNotSupported
    from nuraft_mesg.errors import RaftError as RaftError
    from nuraft_mesg.errors import RaftTimeout as RaftTimeout
    from nuraft_mesg.errors import ResultCode as ResultCode
    from nuraft_mesg.errors import ResultUnknown as ResultUnknown
    from nuraft_mesg.errors import ServerAlreadyExists as ServerAlreadyExists
    from nuraft_mesg.errors import ServerIsJoining as ServerIsJoining
    from nuraft_mesg.errors import ServerIsLeaving as ServerIsLeaving
    from nuraft_mesg.errors import ServerNotFound as ServerNotFound
    from nuraft_mesg.errors import SessionExpired as SessionExpired
    from nuraft_mesg.errors import StorageError as StorageError
    from nuraft_mesg.errors import TermMismatch as TermMismatch
    from nuraft_mesg.group import GroupStatistics as GroupStatistics
    from nuraft_mesg.group import PeerInfo as PeerInfo
    from nuraft_mesg.group import ReplicaConfig as ReplicaConfig
    from nuraft_mesg.manager import GroupContext as GroupContext
    from nuraft_mesg.manager import Manager as Manager
    from nuraft_mesg.manager import ManagerConfig as ManagerConfig
    from nuraft_mesg.manager import MessagingApplication as MessagingApplication
    from nuraft_mesg.manager import to_server_id as to_server_id
    from nuraft_mesg.raft.params import RaftParams as RaftParams
    from nuraft_mesg.raft.types import ClusterConfig as ClusterConfig
    from nuraft_mesg.raft.types import ServerConfig as ServerConfig
    from nuraft_mesg.raft.types import SnapshotMeta as SnapshotMeta
    from nuraft_mesg.sessions import ClientSession as ClientSession
    from nuraft_mesg.sessions import SessionStateMachine as SessionStateMachine
    from nuraft_mesg.storage.interfaces import LogStore as LogStore
    from nuraft_mesg.storage.interfaces import StateMachine as StateMachine
    from nuraft_mesg.storage.interfaces import StateManager as StateManager
    from nuraft_mesg.storage.memory import KVStateMachine as KVStateMachine
    from nuraft_mesg.storage.memory import MemoryLogStore as MemoryLogStore
    from nuraft_mesg.storage.memory import MemoryStateManager as MemoryStateManager
    from nuraft_mesg.transport.security import StaticTokenClient as StaticTokenClient
    from nuraft_mesg.transport.security import StaticTokenVerifier as StaticTokenVerifier
    from nuraft_mesg.transport.security import TlsConfig as TlsConfig
    from nuraft_mesg.transport.security import TokenClient as TokenClient
    from nuraft_mesg.transport.security import TokenVerifier as TokenVerifier


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nuraft_mesg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
