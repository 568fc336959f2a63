"""The real transport: ``nuraft_mesg.Messaging/RaftStep`` (and our batched ``RaftStream``),
``DataService/Call`` and ``Admin/Status`` over gRPC (HTTP/2) with purerpc.

One module per role (docs/transport.md has the design and a picture of who owns which task):

* :mod:`.protocol`: the HTTP/2 / gRPC layer over purerpc's internals, both sides;
* :mod:`.server`: accept loop, connections, requests, the server side of RaftStream;
* :mod:`.client` and :mod:`.channel`: per-peer channels, back-off, PINGs, outbound calls
  and the client side of RaftStream;
* :mod:`.facade`: :class:`GrpcTransport`, which owns one of each and their lifecycle;
* :mod:`.settings`: the configuration both halves share.
"""

from nuraft_mesg.transport.grpc.client import parse_address
from nuraft_mesg.transport.grpc.facade import GrpcTransport
from nuraft_mesg.transport.grpc.settings import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_READ_TIMEOUT,
)

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_READ_TIMEOUT",
    "GrpcTransport",
    "parse_address",
]
