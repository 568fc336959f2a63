from nuraft_mesg.transport._proto import raft_types_pb2 as _raft_types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RaftGroupMsg(_message.Message):
    __slots__ = ("group_id", "msg", "intended_addr", "group_type")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    INTENDED_ADDR_FIELD_NUMBER: _ClassVar[int]
    GROUP_TYPE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    msg: _raft_types_pb2.RaftMessage
    intended_addr: str
    group_type: str
    def __init__(self, group_id: _Optional[str] = ..., msg: _Optional[_Union[_raft_types_pb2.RaftMessage, _Mapping]] = ..., intended_addr: _Optional[str] = ..., group_type: _Optional[str] = ...) -> None: ...

class RaftBatchItem(_message.Message):
    __slots__ = ("seq", "msg", "status", "error", "quiesce")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    QUIESCE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    msg: RaftGroupMsg
    status: int
    error: str
    quiesce: bool
    def __init__(self, seq: _Optional[int] = ..., msg: _Optional[_Union[RaftGroupMsg, _Mapping]] = ..., status: _Optional[int] = ..., error: _Optional[str] = ..., quiesce: _Optional[bool] = ...) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("sender", "items")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    sender: str
    items: _containers.RepeatedCompositeFieldContainer[RaftBatchItem]
    def __init__(self, sender: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RaftBatchItem, _Mapping]]] = ...) -> None: ...
