from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DataServiceRequest(_message.Message):
    __slots__ = ("group_id", "request_name", "intended_addr", "payload")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_NAME_FIELD_NUMBER: _ClassVar[int]
    INTENDED_ADDR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    request_name: str
    intended_addr: str
    payload: bytes
    def __init__(self, group_id: _Optional[str] = ..., request_name: _Optional[str] = ..., intended_addr: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class DataServiceResponse(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...
