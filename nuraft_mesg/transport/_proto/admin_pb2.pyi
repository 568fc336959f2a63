from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ("group_ids",)
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, group_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MemberStatus(_message.Message):
    __slots__ = ("peer_id", "server_id", "priority", "learner", "has_progress", "last_log_idx", "last_succ_resp_us", "is_new_joiner")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    HAS_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_IDX_FIELD_NUMBER: _ClassVar[int]
    LAST_SUCC_RESP_US_FIELD_NUMBER: _ClassVar[int]
    IS_NEW_JOINER_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    server_id: int
    priority: int
    learner: bool
    has_progress: bool
    last_log_idx: int
    last_succ_resp_us: int
    is_new_joiner: bool
    def __init__(self, peer_id: _Optional[str] = ..., server_id: _Optional[int] = ..., priority: _Optional[int] = ..., learner: _Optional[bool] = ..., has_progress: _Optional[bool] = ..., last_log_idx: _Optional[int] = ..., last_succ_resp_us: _Optional[int] = ..., is_new_joiner: _Optional[bool] = ...) -> None: ...

class GroupStatus(_message.Message):
    __slots__ = ("group_id", "group_type", "leader_id", "is_leader", "term", "commit_index", "last_log_index", "applied_index", "members")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_TYPE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    group_type: str
    leader_id: str
    is_leader: bool
    term: int
    commit_index: int
    last_log_index: int
    applied_index: int
    members: _containers.RepeatedCompositeFieldContainer[MemberStatus]
    def __init__(self, group_id: _Optional[str] = ..., group_type: _Optional[str] = ..., leader_id: _Optional[str] = ..., is_leader: _Optional[bool] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., last_log_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., members: _Optional[_Iterable[_Union[MemberStatus, _Mapping]]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("server_uuid", "server_id", "groups", "data_service")
    SERVER_UUID_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    DATA_SERVICE_FIELD_NUMBER: _ClassVar[int]
    server_uuid: str
    server_id: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupStatus]
    data_service: bool
    def __init__(self, server_uuid: _Optional[str] = ..., server_id: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupStatus, _Mapping]]] = ..., data_service: _Optional[bool] = ...) -> None: ...
