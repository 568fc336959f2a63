"""Transport security: TLS (optionally mutual) and token authentication.

nuraft_mesg (inventory §1.4) offers server TLS (``ssl_cert_``/``ssl_key_``), a CA file for
outbound channels (``ssl_ca_``), a ``token_client_`` that adds a metadata header to every
outbound call and a ``token_verifier_`` that checks every inbound call.  This module holds
their Python counterparts; :class:`~nuraft_mesg.transport.grpc.GrpcTransport` applies them and
:class:`~nuraft_mesg.manager.ManagerConfig` has the matching fields.  Mutual TLS (every peer
presents a client certificate that the server verifies against a CA) is an addition.

TLS::

    tls = TlsConfig(cert_file="node.pem", key_file="node.key", ca_file="ca.pem", mutual=True)

* the server presents ``cert_file``/``key_file``; with ``mutual`` it requires a client
  certificate signed by ``ca_file`` and drops the connection otherwise (no group is reached);
* every outbound channel verifies the peer's certificate against ``ca_file`` (the system's
  trust store when empty) and the host name it dialled (``server_name`` overrides it), and
  presents ``cert_file``/``key_file`` as its client certificate when they are set;
* both sides negotiate ALPN ``h2`` (gRPC over TLS requires it) and at least TLS 1.2.

Tokens: a :class:`TokenClient` has an ``auth_header_key`` and a ``get_token()`` (plain or
async), sent as that metadata header on every RaftStep, data-service and status call.  A
:class:`TokenVerifier` sees every inbound call's metadata before anything else happens and
returns :attr:`Status.OK` to let it through, or a refusal: a :class:`Status` or a
``(Status, message)`` pair.  A refused call is answered with that status (UNAUTHENTICATED for
a verifier that raises) and its body is never read.  :class:`StaticTokenClient` and
:class:`StaticTokenVerifier` are the ready-made shared-secret pair.
"""

from __future__ import annotations

import hmac
import inspect
import ssl
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

from nuraft_mesg.transport.base import Status

__all__ = [
    "AuthResult",
    "Metadata",
    "StaticTokenClient",
    "StaticTokenVerifier",
    "TlsConfig",
    "TokenClient",
    "TokenVerifier",
    "fetch_token",
    "run_verifier",
]

Metadata: TypeAlias = Mapping[str, str]
"""A call's custom metadata: lower-case header name -> value.  A name sent more than once
has its values joined with ``","`` (so a duplicated auth header never matches a token);
binary (``-bin``) headers are left out."""

AuthResult: TypeAlias = "Status | tuple[Status, str]"
"""What a verifier returns: ``Status.OK`` (or ``(Status.OK, ...)``) lets the call through."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """TLS settings of one node or client (see the module doc).  Paths are PEM files.

    Args:
        cert_file, key_file: this node's certificate (chain) and private key.  Needed to
            serve; on outbound channels they are the client certificate (mutual TLS).
        ca_file: CA bundle that peers' certificates must chain to (outbound: the servers
            dialled; with ``mutual``: the clients).  Empty: the system's trust store for
            outbound channels (``mutual`` then needs it).
        mutual: the server requires and verifies client certificates.
        server_name: the name checked against every peer's certificate instead of the host
            part of its address (all peers then share one certificate name).
    """

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    mutual: bool = False
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("TLS needs both a certificate and a key file (or neither)")
        if self.mutual and not self.ca_file:
            raise ValueError("mutual TLS needs a CA file to verify client certificates")

    @property
    def can_serve(self) -> bool:
        return bool(self.cert_file)

    def server_context(self) -> ssl.SSLContext:
        """A fresh server context (reads the files now; raises OSError/ssl.SSLError)."""
        if not self.can_serve:
            raise ValueError("a TLS server needs cert_file and key_file")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.mutual:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=self.ca_file)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A fresh client context: verifies servers, presents our certificate if we have one."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.set_alpn_protocols(["h2"])
        return ctx


@runtime_checkable
class TokenClient(Protocol):
    """Adds ``(auth_header_key, get_token())`` to every outbound call (nuraft_mesg's
    ``token_client_``).  ``get_token`` may be a coroutine function (e.g. to refresh a token);
    it is called once per call, under the call's deadline."""

    @property
    def auth_header_key(self) -> str: ...

    def get_token(self) -> str | Awaitable[str]: ...


@runtime_checkable
class TokenVerifier(Protocol):
    """Checks every inbound call (nuraft_mesg's ``token_verifier_``).  May be a coroutine
    function; runs under the call's deadline.  Return ``Status.OK`` to accept, a Status or
    ``(Status, message)`` to refuse (typically UNAUTHENTICATED or PERMISSION_DENIED)."""

    def verify(self, metadata: Metadata) -> AuthResult | Awaitable[AuthResult]: ...


class StaticTokenClient:
    """Sends one fixed token as ``<scheme> <token>`` (``scheme`` empty: the bare token)."""

    def __init__(
        self, token: str, *, auth_header_key: str = "authorization", scheme: str = "Bearer"
    ) -> None:
        self.auth_header_key = auth_header_key
        self._value = f"{scheme} {token}" if scheme else token

    def get_token(self) -> str:
        return self._value


class StaticTokenVerifier:
    """Accepts a call whose ``auth_header_key`` header is ``<scheme> <token>`` for one of
    ``tokens`` (compared in constant time); anything else is UNAUTHENTICATED."""

    def __init__(
        self,
        tokens: str | Iterable[str],
        *,
        auth_header_key: str = "authorization",
        scheme: str = "Bearer",
    ) -> None:
        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        if not tokens or not all(tokens):
            raise ValueError("StaticTokenVerifier needs at least one non-empty token")
        self.auth_header_key = auth_header_key.lower()
        self._accepted = [(f"{scheme} {t}" if scheme else t).encode() for t in tokens]

    def verify(self, metadata: Metadata) -> AuthResult:
        value = metadata.get(self.auth_header_key)
        if value is None:
            return Status.UNAUTHENTICATED, f"missing {self.auth_header_key} header"
        given = value.encode("utf-8", "surrogateescape")
        # Compare against every accepted token so timing does not tell which one is close.
        ok = False
        for accepted in self._accepted:
            ok |= hmac.compare_digest(given, accepted)
        if ok:
            return Status.OK
        return Status.UNAUTHENTICATED, "invalid token"


# -- helpers used by the transport ------------------------------------------------------------
def _valid_header(name: str, value: str) -> bool:
    return (
        bool(name)
        and name == name.lower()
        and not name.startswith(("grpc-", ":"))
        and not name.endswith("-bin")
        and all(0x21 <= ord(c) <= 0x7E for c in name)
        and all(0x20 <= ord(c) <= 0x7E for c in value)
    )


async def fetch_token(client: TokenClient) -> tuple[tuple[str, str], ...]:
    """The metadata ``client`` adds to one call.

    Raises:
        ValueError: the token or header name cannot be sent (not printable ASCII, a reserved
            or upper-case header name) or ``get_token`` failed.
    """
    try:
        token = client.get_token()
        if inspect.isawaitable(token):
            token = await token
    except Exception as exc:
        raise ValueError(f"token client failed: {type(exc).__name__}: {exc}") from exc
    key = client.auth_header_key
    if not isinstance(token, str) or not isinstance(key, str) or not _valid_header(key, token):
        raise ValueError(f"cannot send token header {key!r}: not a valid gRPC metadata entry")
    return ((key, token),)


async def run_verifier(verifier: TokenVerifier, metadata: Metadata) -> tuple[Status, str]:
    """Run ``verifier``; ``(Status.OK, "")`` to accept.  A verifier that raises, or returns
    something that is not a result, refuses with UNAUTHENTICATED."""
    try:
        result: object = verifier.verify(metadata)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        return Status.UNAUTHENTICATED, f"token verifier failed: {type(exc).__name__}"
    if isinstance(result, Status):
        return result, "" if result == Status.OK else "refused by the token verifier"
    if (
        isinstance(result, tuple)
        and len(result) == 2
        and isinstance(result[0], Status)
        and isinstance(result[1], str)
    ):
        return result[0], result[1]
    return Status.UNAUTHENTICATED, "token verifier returned no result"


def metadata_of(custom_metadata: Iterable[tuple[str, object]]) -> dict[str, str]:
    """:data:`Metadata` from purerpc's ``custom_metadata`` (see :data:`Metadata`)."""
    out: dict[str, str] = {}
    for name, value in custom_metadata:
        if not isinstance(value, str):
            continue  # -bin headers arrive decoded to bytes
        key = name.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out
