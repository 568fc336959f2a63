"""What a Manager is built from: its configuration, the application it serves, and the rule
that turns a node's uuid into its Raft server id.

Separate from :mod:`nuraft_mesg.manager` because these are plain values with no runtime:
the client, the test harness and the command line need them without the Manager's machinery.
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from nuraft_mesg.storage.interfaces import StateManager
from nuraft_mesg.transport.security import TlsConfig, TokenClient, TokenVerifier

if TYPE_CHECKING:
    from nuraft_mesg.transport.grpc import GrpcTransport

__all__ = ["ManagerConfig", "MessagingApplication", "to_server_id"]


def to_server_id(peer_uuid: str) -> int:
    """The Raft server id of a peer: a non-negative 31-bit hash of its uuid.

    nuraft_mesg uses boost's ``hash<uuid> >> 33``; we use the first 8 bytes of BLAKE2b over
    the uuid's 16 bytes, shifted right by 33, which is stable across processes, Python
    versions and machines (Python's own ``hash`` is salted per process).
    """
    raw = uuidlib.UUID(peer_uuid).bytes
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 33


@runtime_checkable
class MessagingApplication(Protocol):
    """What the application supplies (nuraft_mesg's ``MessagingApplication``)."""

    def lookup_peer(self, peer_id: str) -> str:
        """Resolve a peer uuid to ``"host:port"``; "" when unknown."""
        ...

    def create_state_mgr(self, server_id: int, group_id: str) -> StateManager:
        """Make the state manager of a group this node creates or is invited into."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerConfig:
    """nuraft_mesg's ``Manager::Params`` plus its dynamic settings, in seconds."""

    server_uuid: str
    port: int = 0
    """Listen port; 0 picks a free one (then read ``Manager.port``)."""
    host: str = "127.0.0.1"
    """Listen address.  nuraft_mesg binds 0.0.0.0; we default to loopback (expose a node
    beyond it with TLS and a token verifier: docs/security.md)."""
    default_group_type: str = ""
    """Group type used when an incoming join names none (nuraft_mesg's compatibility rule)."""
    leader_change_timeout: float = 3.2
    """How long create_group, add_member and become_leader wait (raft_leader_change_timeout)."""
    raft_request_timeout: float = 2.0
    """Deadline of one RaftStep to a peer (raft_request_deadline_secs)."""
    client_request_timeout: float = 3.0
    """How long append_entries waits for commit and apply (NuRaft's client_req_timeout)."""
    max_message_size: int = 64 << 20
    """Largest message sent or accepted, in bytes (Raft and data service alike), unless one of
    the next two says otherwise."""
    max_send_message_size: int = 0
    """Largest message this node sends (requests on its channels, replies from its server);
    0: ``max_message_size``.  A larger one fails with RESOURCE_EXHAUSTED before it is sent."""
    max_receive_message_size: int = 0
    """Largest message this node accepts (requests to its server, replies on its channels);
    0: ``max_message_size``.  A larger one is refused with RESOURCE_EXHAUSTED, for that call
    only."""
    ssl_cert: str = ""
    """PEM certificate (chain) of this node: the server's certificate and, on outbound
    channels, the client certificate.  With ``ssl_key``, turns TLS on for the server and every
    outbound channel (all nodes of a cluster must agree)."""
    ssl_key: str = ""
    """PEM private key of ``ssl_cert``."""
    ssl_ca: str = ""
    """PEM CA bundle that peers' certificates must chain to (nuraft_mesg's client CA file);
    empty: the system's trust store."""
    ssl_mutual: bool = False
    """Mutual TLS: the server requires a client certificate signed by ``ssl_ca`` (a peer
    without one cannot reach any group)."""
    ssl_server_name: str = ""
    """Name checked on peers' certificates (empty: the host dialled)."""
    token_client: TokenClient | None = None
    """Adds its ``(auth_header_key, get_token())`` header to every outbound call (RaftStep,
    data service, status)."""
    token_verifier: TokenVerifier | None = None
    """Checks every inbound call's metadata; a refusal is answered (UNAUTHENTICATED unless it
    says otherwise) before the request reaches any group or handler."""
    handshake_timeout: float = 10.0
    """Seconds an accepted connection has to finish its TLS handshake and HTTP/2 preface and
    start its first call (else it is dropped)."""
    request_read_timeout: float = 30.0
    """Seconds an incoming request has to arrive completely after its headers."""
    enable_data_service: bool = True
    """Serve and send data-service requests (:mod:`nuraft_mesg.data_service`).  On by default
    (nuraft_mesg's ``with_data_svc`` defaults to off): with nothing bound it costs nothing.
    Off: ``bind_data_service_request`` returns False, incoming calls get UNIMPLEMENTED and
    sends raise ServerNotFound."""
    data_request_timeout: float = 2.0
    """Deadline of one data-service call (data_request_deadline_secs)."""
    peer_queue_size: int = 16384
    """Outbound messages queued per peer before new ones are dropped (Raft retries); votes
    and heartbeats may use as many again (see :mod:`nuraft_mesg.transport.peers`)."""
    data_dir: str | None = None
    """Directory of the durable default store (``<data_dir>/nuraft.db``, see
    :mod:`nuraft_mesg.storage.sqlite`).  When set, the Manager persists the log, hard state and
    config of every group it hosts there (wrapping the application's state managers, which
    still supply the state machine, the initial config and the hooks), and on start rejoins
    every stored group as soon as its group type is registered.  None: the application's
    state managers persist everything themselves."""

    liveness_interval: float = 0.25
    """Node-level liveness for quiet groups (see ``RaftParams.quiesce_after_ms``): while a
    group here follows a quiet leader, that leader's node is pinged every this many seconds;
    when a ping is not answered within ``liveness_timeout``, every group it leads here
    campaigns soon."""
    liveness_timeout: float = 2.0
    """Deadline of one liveness ping, and of the probe of a peer whose connection broke
    (``peer_lost``).  A dead node is noticed at once (its connection is reset or refused);
    this only bounds a silent partition.  Generous on purpose: an overloaded node answers
    late, and taking a late answer for a dead leader would start an election in every group
    that node leads -- more load, more late answers (measured: 10,000 groups collapsed
    with a 0.25 s deadline)."""

    def __post_init__(self) -> None:
        if not (self.liveness_interval > 0 and self.liveness_timeout > 0):
            raise ValueError("liveness_interval and liveness_timeout must be > 0")
        try:
            uuidlib.UUID(self.server_uuid)
        except ValueError:
            raise ValueError(f"server_uuid {self.server_uuid!r} is not a uuid") from None
        if not 0 <= self.port < 65536:
            raise ValueError("port must be in [0, 65535]")
        if (self.ssl_ca or self.ssl_mutual) and not self.ssl_cert:
            raise ValueError("ssl_ca / ssl_mutual need ssl_cert and ssl_key (TLS is off)")
        self.tls  # noqa: B018 - validates the TLS fields

    @property
    def tls(self) -> TlsConfig | None:
        """The TLS settings (None: plain TCP)."""
        if not (self.ssl_cert or self.ssl_key):
            return None
        return TlsConfig(cert_file=self.ssl_cert, key_file=self.ssl_key, ca_file=self.ssl_ca,
                         mutual=self.ssl_mutual, server_name=self.ssl_server_name)

    def make_transport(self, lookup_peer: Callable[[str], str]) -> GrpcTransport:
        """The GrpcTransport this configuration describes (what a Manager builds when it is
        given no transport)."""
        from nuraft_mesg.transport.grpc import GrpcTransport

        return GrpcTransport(
            server_uuid=self.server_uuid,
            host=self.host,
            port=self.port,
            lookup_peer=lookup_peer,
            max_message_size=self.max_message_size,
            max_send_message_size=self.max_send_message_size,
            max_receive_message_size=self.max_receive_message_size,
            tls=self.tls,
            token_client=self.token_client,
            token_verifier=self.token_verifier,
            handshake_timeout=self.handshake_timeout,
            read_timeout=self.request_read_timeout,
        )
