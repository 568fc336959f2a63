from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[LogType]
    APP: _ClassVar[LogType]
    CONFIG: _ClassVar[LogType]
    CLUSTER: _ClassVar[LogType]
    PACK: _ClassVar[LogType]
    SNAPSYNC: _ClassVar[LogType]
    CUSTOM: _ClassVar[LogType]

class ResultCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[ResultCode]
    CANCELLED: _ClassVar[ResultCode]
    TIMEOUT: _ClassVar[ResultCode]
    NOT_LEADER: _ClassVar[ResultCode]
    BAD_REQUEST: _ClassVar[ResultCode]
    SERVER_ALREADY_EXISTS: _ClassVar[ResultCode]
    CONFIG_CHANGING: _ClassVar[ResultCode]
    SERVER_IS_JOINING: _ClassVar[ResultCode]
    SERVER_NOT_FOUND: _ClassVar[ResultCode]
    CANNOT_REMOVE_LEADER: _ClassVar[ResultCode]
    SERVER_IS_LEAVING: _ClassVar[ResultCode]
    TERM_MISMATCH: _ClassVar[ResultCode]
    RESULT_NOT_EXIST_YET: _ClassVar[ResultCode]
    FAILED: _ClassVar[ResultCode]
UNKNOWN: LogType
APP: LogType
CONFIG: LogType
CLUSTER: LogType
PACK: LogType
SNAPSYNC: LogType
CUSTOM: LogType
OK: ResultCode
CANCELLED: ResultCode
TIMEOUT: ResultCode
NOT_LEADER: ResultCode
BAD_REQUEST: ResultCode
SERVER_ALREADY_EXISTS: ResultCode
CONFIG_CHANGING: ResultCode
SERVER_IS_JOINING: ResultCode
SERVER_NOT_FOUND: ResultCode
CANNOT_REMOVE_LEADER: ResultCode
SERVER_IS_LEAVING: ResultCode
TERM_MISMATCH: ResultCode
RESULT_NOT_EXIST_YET: ResultCode
FAILED: ResultCode

class LogEntry(_message.Message):
    __slots__ = ("term", "type", "buffer", "timestamp")
    TERM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    term: int
    type: LogType
    buffer: bytes
    timestamp: int
    def __init__(self, term: _Optional[int] = ..., type: _Optional[_Union[LogType, str]] = ..., buffer: _Optional[bytes] = ..., timestamp: _Optional[int] = ...) -> None: ...

class RCMsgBase(_message.Message):
    __slots__ = ("term", "type", "src", "dest")
    TERM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DEST_FIELD_NUMBER: _ClassVar[int]
    term: int
    type: int
    src: int
    dest: int
    def __init__(self, term: _Optional[int] = ..., type: _Optional[int] = ..., src: _Optional[int] = ..., dest: _Optional[int] = ...) -> None: ...

class RCRequest(_message.Message):
    __slots__ = ("last_log_term", "last_log_index", "commit_index", "log_entries", "read_id")
    LAST_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LOG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    READ_ID_FIELD_NUMBER: _ClassVar[int]
    last_log_term: int
    last_log_index: int
    commit_index: int
    log_entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    read_id: int
    def __init__(self, last_log_term: _Optional[int] = ..., last_log_index: _Optional[int] = ..., commit_index: _Optional[int] = ..., log_entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., read_id: _Optional[int] = ...) -> None: ...

class RCResponse(_message.Message):
    __slots__ = ("next_index", "accepted", "context", "dest_addr", "result_code", "batch_size_hint", "results", "read_id")
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DEST_ADDR_FIELD_NUMBER: _ClassVar[int]
    RESULT_CODE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_HINT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    READ_ID_FIELD_NUMBER: _ClassVar[int]
    next_index: int
    accepted: bool
    context: bytes
    dest_addr: str
    result_code: ResultCode
    batch_size_hint: int
    results: _containers.RepeatedScalarFieldContainer[bytes]
    read_id: int
    def __init__(self, next_index: _Optional[int] = ..., accepted: _Optional[bool] = ..., context: _Optional[bytes] = ..., dest_addr: _Optional[str] = ..., result_code: _Optional[_Union[ResultCode, str]] = ..., batch_size_hint: _Optional[int] = ..., results: _Optional[_Iterable[bytes]] = ..., read_id: _Optional[int] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("base", "rc_request", "rc_response")
    BASE_FIELD_NUMBER: _ClassVar[int]
    RC_REQUEST_FIELD_NUMBER: _ClassVar[int]
    RC_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    base: RCMsgBase
    rc_request: RCRequest
    rc_response: RCResponse
    def __init__(self, base: _Optional[_Union[RCMsgBase, _Mapping]] = ..., rc_request: _Optional[_Union[RCRequest, _Mapping]] = ..., rc_response: _Optional[_Union[RCResponse, _Mapping]] = ...) -> None: ...
