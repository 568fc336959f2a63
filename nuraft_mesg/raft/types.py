"""Value types of the sans-IO Raft core.

Everything here is plain data: slotted, frozen dataclasses and enums.  The names and numbers
are NuRaft's, because they travel inside nuraft_mesg's wire schema (``proto/raft_types.proto``);
the codec in :mod:`nuraft_mesg.transport.codec` maps them one to one, so the core never imports
generated protobuf code.

Indices and terms are ``int`` and start at 1; index 0 / term 0 mean "nothing".
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from nuraft_mesg.errors import BadRequest, ResultCode

__all__ = [
    "ClusterConfig",
    "HardState",
    "LogEntry",
    "LogType",
    "Message",
    "MsgType",
    "ServerConfig",
    "NotificationType",
    "SnapshotMeta",
]


class MsgType(enum.IntEnum):
    """NuRaft's ``msg_type``; carried in ``RCMsgBase.type``."""

    REQUEST_VOTE_REQUEST = 1
    REQUEST_VOTE_RESPONSE = 2
    APPEND_ENTRIES_REQUEST = 3
    APPEND_ENTRIES_RESPONSE = 4
    CLIENT_REQUEST = 5
    ADD_SERVER_REQUEST = 6
    ADD_SERVER_RESPONSE = 7
    REMOVE_SERVER_REQUEST = 8
    REMOVE_SERVER_RESPONSE = 9
    SYNC_LOG_REQUEST = 10
    SYNC_LOG_RESPONSE = 11
    JOIN_CLUSTER_REQUEST = 12
    JOIN_CLUSTER_RESPONSE = 13
    LEAVE_CLUSTER_REQUEST = 14
    LEAVE_CLUSTER_RESPONSE = 15
    INSTALL_SNAPSHOT_REQUEST = 16
    INSTALL_SNAPSHOT_RESPONSE = 17
    PING_REQUEST = 18
    PING_RESPONSE = 19
    PRE_VOTE_REQUEST = 20
    PRE_VOTE_RESPONSE = 21
    OTHER_REQUEST = 22
    OTHER_RESPONSE = 23
    PRIORITY_CHANGE_REQUEST = 24
    PRIORITY_CHANGE_RESPONSE = 25
    RECONNECT_REQUEST = 26
    RECONNECT_RESPONSE = 27
    CUSTOM_NOTIFICATION_REQUEST = 28
    CUSTOM_NOTIFICATION_RESPONSE = 29
    # Extensions (not NuRaft's; only Python nodes send or understand them: a C++ leader
    # refuses an unknown type, so a follower read through a C++ leader fails).
    READ_INDEX_REQUEST = 101
    """A follower asks its leader for a read index (follower reads, Raft thesis §6.4)."""
    READ_INDEX_RESPONSE = 102
    CLIENT_READ_REQUEST = 103
    """An external client's read (one CUSTOM entry: a mode byte, then the query); served by
    the receiving node's runtime, never by the core (see :mod:`nuraft_mesg.reads`)."""
    CLIENT_READ_RESPONSE = 104

    @property
    def is_request(self) -> bool:
        return self in _RESPONSE_OF

    @property
    def response_type(self) -> MsgType:
        """The message type that answers this request (NuRaft answers client requests with
        an append_entries_response)."""
        return _RESPONSE_OF[self]


_RESPONSE_OF: dict[MsgType, MsgType] = {
    MsgType.REQUEST_VOTE_REQUEST: MsgType.REQUEST_VOTE_RESPONSE,
    MsgType.APPEND_ENTRIES_REQUEST: MsgType.APPEND_ENTRIES_RESPONSE,
    MsgType.CLIENT_REQUEST: MsgType.APPEND_ENTRIES_RESPONSE,
    MsgType.ADD_SERVER_REQUEST: MsgType.ADD_SERVER_RESPONSE,
    MsgType.REMOVE_SERVER_REQUEST: MsgType.REMOVE_SERVER_RESPONSE,
    MsgType.SYNC_LOG_REQUEST: MsgType.SYNC_LOG_RESPONSE,
    MsgType.JOIN_CLUSTER_REQUEST: MsgType.JOIN_CLUSTER_RESPONSE,
    MsgType.LEAVE_CLUSTER_REQUEST: MsgType.LEAVE_CLUSTER_RESPONSE,
    MsgType.INSTALL_SNAPSHOT_REQUEST: MsgType.INSTALL_SNAPSHOT_RESPONSE,
    MsgType.PING_REQUEST: MsgType.PING_RESPONSE,
    MsgType.PRE_VOTE_REQUEST: MsgType.PRE_VOTE_RESPONSE,
    MsgType.OTHER_REQUEST: MsgType.OTHER_RESPONSE,
    MsgType.PRIORITY_CHANGE_REQUEST: MsgType.PRIORITY_CHANGE_RESPONSE,
    MsgType.RECONNECT_REQUEST: MsgType.RECONNECT_RESPONSE,
    MsgType.CUSTOM_NOTIFICATION_REQUEST: MsgType.CUSTOM_NOTIFICATION_RESPONSE,
    MsgType.READ_INDEX_REQUEST: MsgType.READ_INDEX_RESPONSE,
    MsgType.CLIENT_READ_REQUEST: MsgType.CLIENT_READ_RESPONSE,
}


class LogType(enum.IntEnum):
    """NuRaft's ``log_val_type`` (numerically equal to nuraft_mesg's ``LogType``)."""

    UNKNOWN = 0
    APP = 1
    CONFIG = 2
    CLUSTER = 3
    PACK = 4
    SNAPSYNC = 5
    CUSTOM = 999


class NotificationType(enum.IntEnum):
    """Kinds of ``custom_notification`` (NuRaft's ``custom_notification_msg::type``).

    Carried as the single byte of a CUSTOM entry in a custom_notification_request.
    """

    OUT_OF_LOG_RANGE_WARNING = 1
    LEADERSHIP_TAKEOVER = 2
    REQUEST_RESIGNATION = 3


@dataclass(slots=True, frozen=True)
class LogEntry:
    """One log entry.  Its index is its position in the log, so it is not stored here."""

    term: int
    type: LogType = LogType.APP
    buffer: bytes = b""
    timestamp: int = 0

    @property
    def size(self) -> int:
        """Bytes counted against ``RaftParams.max_append_bytes``."""
        return len(self.buffer) + 16


@dataclass(slots=True, frozen=True)
class Message:
    """A NuRaft message: ``RCMsgBase`` plus the fields of ``RCRequest`` or ``RCResponse``.

    Requests use ``last_log_term``, ``last_log_index``, ``commit_index`` and ``entries``;
    responses use ``next_index``, ``accepted``, ``context``, ``result_code``,
    ``batch_size_hint`` and ``results``.  ``msg_type.is_request`` says which half is
    meaningful.  ``results`` (an extension) are an applied client_request's per-entry state
    machine results; NuRaft's ``context`` carries only the last one.

    ``read_id`` (an extension, in both halves; C++ nodes neither send nor echo it): in an
    append_entries request, the leader's latest heartbeat round for reads, echoed by the
    answer, so that a quorum of answers confirms the leadership a read index needs; in
    read_index messages, the follower's request id.  A read_index response carries the read
    index in ``next_index``.
    """

    type: MsgType
    term: int
    src: int
    dest: int
    last_log_term: int = 0
    last_log_index: int = 0
    commit_index: int = 0
    entries: tuple[LogEntry, ...] = ()
    next_index: int = 0
    accepted: bool = False
    context: bytes = b""
    result_code: ResultCode = ResultCode.OK
    batch_size_hint: int = 0
    results: tuple[bytes, ...] = ()
    read_id: int = 0

    @property
    def is_request(self) -> bool:
        return self.type.is_request


@dataclass(slots=True, frozen=True)
class HardState:
    """What a node must persist before it answers anyone: its term, its vote and how far
    it knows the log to be committed (commit is an optimisation; term and vote are safety)."""

    term: int = 0
    vote: int = -1
    commit: int = 0


@dataclass(slots=True, frozen=True)
class ServerConfig:
    """One member of a group: NuRaft's ``srv_config``.

    ``endpoint`` is the peer's uuid string in nuraft_mesg.  Priority 0 means "never leads";
    learners replicate the log but are outside every quorum and never campaign.
    """

    id: int
    endpoint: str = ""
    priority: int = 1
    learner: bool = False
    aux: str = ""
    dc_id: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "priority": self.priority,
            "learner": self.learner,
            "aux": self.aux,
            "dc_id": self.dc_id,
        }

    @staticmethod
    def from_json(obj: object) -> ServerConfig:
        if not isinstance(obj, dict):
            raise BadRequest("server config must be an object")
        try:
            srv = ServerConfig(
                id=_int(obj["id"]),
                endpoint=str(obj.get("endpoint", "")),
                priority=_int(obj.get("priority", 1)),
                learner=bool(obj.get("learner", False)),
                aux=str(obj.get("aux", "")),
                dc_id=_int(obj.get("dc_id", 0)),
            )
        except KeyError as exc:
            raise BadRequest(f"server config lacks {exc}") from None
        if srv.priority < 0:
            raise BadRequest("priority must be >= 0")
        return srv

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> ServerConfig:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting
            raise BadRequest(f"undecodable server config: {exc}") from None
        return ServerConfig.from_json(obj)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"expected an integer, got {value!r}")
    return value


@dataclass(slots=True, frozen=True)
class ClusterConfig:
    """A group's membership: NuRaft's ``cluster_config``.

    ``log_idx`` is the index of the CONFIG entry that carries this config (0 for the initial
    config that a state manager supplies), ``prev_log_idx`` the index of the config it replaced.
    Serialized as canonical JSON inside a CONFIG entry's buffer.
    """

    servers: tuple[ServerConfig, ...] = ()
    log_idx: int = 0
    prev_log_idx: int = 0
    user_ctx: str = field(default="")

    def __post_init__(self) -> None:
        ids = [s.id for s in self.servers]
        if len(ids) != len(set(ids)):
            raise BadRequest(f"duplicate server ids in config: {ids}")

    # -- queries -----------------------------------------------------------------------------
    def get(self, server_id: int) -> ServerConfig | None:
        for srv in self.servers:
            if srv.id == server_id:
                return srv
        return None

    def __contains__(self, server_id: object) -> bool:
        return any(s.id == server_id for s in self.servers)

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(s.id for s in self.servers)

    @property
    def voters(self) -> frozenset[int]:
        return frozenset(s.id for s in self.servers if not s.learner)

    @property
    def quorum(self) -> int:
        """Votes (or replicas) needed: a majority of the voters."""
        return len(self.voters) // 2 + 1

    @property
    def max_priority(self) -> int:
        return max((s.priority for s in self.servers if not s.learner), default=0)

    # -- construction -----------------------------------------------------------------------
    def with_servers(self, servers: Iterable[ServerConfig]) -> ClusterConfig:
        return ClusterConfig(
            servers=tuple(sorted(servers, key=lambda s: s.id)),
            log_idx=self.log_idx,
            prev_log_idx=self.prev_log_idx,
            user_ctx=self.user_ctx,
        )

    def at_index(self, log_idx: int) -> ClusterConfig:
        """This config as carried by the CONFIG entry at ``log_idx``."""
        return ClusterConfig(
            servers=self.servers,
            log_idx=log_idx,
            prev_log_idx=self.log_idx,
            user_ctx=self.user_ctx,
        )

    def same_members(self, other: ClusterConfig) -> bool:
        return self.servers == other.servers

    # -- codec ------------------------------------------------------------------------------
    def encode(self) -> bytes:
        obj = {
            "log_idx": self.log_idx,
            "prev_log_idx": self.prev_log_idx,
            "user_ctx": self.user_ctx,
            "servers": [s.to_json() for s in self.servers],
        }
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> ClusterConfig:
        """Parse a serialized config; hostile bytes raise :class:`BadRequest`."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting
            raise BadRequest(f"undecodable cluster config: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("servers"), list):
            raise BadRequest("cluster config must be an object with a server list")
        servers = tuple(ServerConfig.from_json(s) for s in obj["servers"])
        return ClusterConfig(
            servers=tuple(sorted(servers, key=lambda s: s.id)),
            log_idx=_int(obj.get("log_idx", 0)),
            prev_log_idx=_int(obj.get("prev_log_idx", 0)),
            user_ctx=str(obj.get("user_ctx", "")),
        )


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    """What identifies a snapshot (NuRaft's ``snapshot`` object, without its payload): the
    state as of the committed entry ``last_index`` (of term ``last_term``), and ``config``, the
    configuration in effect at that index (it replaces the log entries the snapshot covers)."""

    last_index: int
    last_term: int
    config: ClusterConfig
