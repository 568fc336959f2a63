"""What both halves of :class:`~nuraft_mesg.transport.grpc.GrpcTransport` read: this node's
identity, the message size limits, TLS, tokens and the server's time limits.

One mutable object shared by the server and the client, so that a limit changed on the
transport applies to both at their next connection or call, as it did before the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

from nuraft_mesg.transport.security import TlsConfig, TokenClient, TokenVerifier

DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
"""Largest message sent or accepted (bytes) when no limit is given (0)."""
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds an accepted connection has for the TLS handshake, the HTTP/2 preface and the
headers of its first call."""
DEFAULT_READ_TIMEOUT: Final = 30.0
"""Seconds a request has to arrive completely after its headers (unless its grpc-timeout is
shorter)."""

_MAX_MESSAGE_SIZE_LIMIT: Final = (1 << 30) - 1
"""purerpc advertises an HTTP/2 window of twice the message size, which must stay < 2**31."""


@dataclass(slots=True)
class Settings:
    """The transport's configuration (see :class:`GrpcTransport` for each field)."""

    server_uuid: str
    max_send_message_size: int
    max_receive_message_size: int
    tls: TlsConfig | None
    token_client: TokenClient | None
    token_verifier: TokenVerifier | None
    handshake_timeout: float
    read_timeout: float
    enable_stream: bool
    uuid: UUID = field(init=False)

    def __post_init__(self) -> None:
        self.uuid = UUID(self.server_uuid)
