"""TLS and token options shared by the subcommands that talk to nodes or serve.

Every such subcommand (``client``, ``status``, ``server``) takes the same options, built by
:func:`add_security_arguments` and turned into the library's types by
:func:`security_from_args`::

    --tls                  use TLS (implied by every --tls-* option)
    --tls-ca FILE          CA bundle the nodes' certificates chain to
    --tls-cert FILE        this side's certificate (a node's server certificate, a client's
    --tls-key FILE         client certificate) and its private key, PEM
    --tls-server-name NAME name checked on the nodes' certificates
    --mtls                 mutual TLS: the server requires client certificates
    --token-file FILE      the bearer token, read from a file
    --token-env VAR        the bearer token, read from an environment variable

A token is never taken from the command line (it would show in ``ps``).  On ``client`` and
``status`` it becomes a :class:`~nuraft_mesg.transport.security.StaticTokenClient` (sent as
``authorization: Bearer <token>``); on ``server`` also a
:class:`~nuraft_mesg.transport.security.StaticTokenVerifier` that accepts that token, since a
node both answers its peers and calls them.

Incomplete or unusable combinations (a certificate without its key, ``--mtls`` without a CA,
an unreadable file, an empty token...) are refused before anything starts:
:func:`parse_args_with_security` prints one line, ``<prog>: error: <what is wrong>``, and exits
with status 2, as argparse does for its own errors.
"""

from __future__ import annotations

import argparse
import os
import ssl
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from nuraft_mesg.transport.security import (
    StaticTokenClient,
    StaticTokenVerifier,
    TlsConfig,
    TokenClient,
    TokenVerifier,
)

__all__ = [
    "Security",
    "SecurityOptionError",
    "add_security_arguments",
    "security_from_args",
    "parse_args_with_security",
]


class Security(NamedTuple):
    """What the security options describe (each None when not asked for)."""

    tls: TlsConfig | None
    token_client: TokenClient | None
    token_verifier: TokenVerifier | None


class SecurityOptionError(ValueError):
    """The security options are incomplete or name something unusable (one-line message)."""


def add_security_arguments(parser: argparse.ArgumentParser, *, serving: bool) -> None:
    """Add the TLS and token options to ``parser``.

    ``serving``: the options of a node (``server``): its certificate is required for TLS,
    ``--mtls`` makes it require client certificates, the token is also the one it accepts.
    Otherwise the options of a client (``client``, ``status``)."""
    if serving:
        tls_doc = ("A node serves TLS with --tls-cert/--tls-key and dials its peers over TLS, "
                   "verifying them against --tls-ca (the system's trust store without it).")
        ca_help = ("PEM CA bundle that the peers' certificates chain to (with --mtls: the "
                   "clients' certificates too)")
        cert_help = "PEM certificate (chain) of this node, also its client certificate"
        mtls_help = "mutual TLS: require a client certificate signed by --tls-ca from every caller"
        token_use = "every inbound call must carry it, every outbound call carries it"
    else:
        tls_doc = ("Talk to the nodes over TLS: any --tls-* option turns it on.  Their "
                   "certificates are verified against --tls-ca (the system's trust store "
                   "without it) and the host dialled (--tls-server-name overrides it).")
        ca_help = "PEM CA bundle that the nodes' certificates chain to"
        cert_help = "PEM client certificate (chain), for nodes with mutual TLS"
        mtls_help = ("the nodes require client certificates: check that --tls-cert, --tls-key "
                     "and --tls-ca are given")
        token_use = "nodes with a token verifier require it"
    tls = parser.add_argument_group("TLS", _paragraph(tls_doc))
    tls.add_argument("--tls", action="store_true",
                     help="use TLS (implied by every other --tls-* option)")
    tls.add_argument("--tls-ca", metavar="FILE", help=ca_help)
    tls.add_argument("--tls-cert", metavar="FILE", help=cert_help)
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    tls.add_argument("--tls-server-name", metavar="NAME",
                     help="name checked on the nodes' certificates instead of the host "
                     "part of their address (when the nodes share one certificate)")
    tls.add_argument("--mtls", action="store_true", help=mtls_help)
    tokens = parser.add_argument_group("token", _paragraph(
        f"A bearer token, sent as 'authorization: Bearer TOKEN' ({token_use}).  Never given "
        "on the command line, where other users could read it."))
    tokens.add_argument("--token-file", metavar="FILE",
                        help="read the token from FILE (surrounding whitespace ignored)")
    tokens.add_argument("--token-env", metavar="VAR",
                        help="read the token from the environment variable VAR")


def _paragraph(text: str) -> str:
    # Wrapped here: a parser with RawDescriptionHelpFormatter (server) prints it as it is.
    return textwrap.fill(text, width=76)


def security_from_args(
    args: argparse.Namespace,
    *,
    serving: bool,
    environ: Mapping[str, str] | None = None,
) -> Security:
    """The TLS settings and token client/verifier that ``args`` describe (see the module
    doc).  Every file named is read now, so that a mistake is reported before anything starts.

    Raises:
        SecurityOptionError: an incomplete combination, an unreadable or invalid file, or an
            unusable token.
    """
    tls = _tls_from_args(args, serving=serving)
    token = _token_from_args(args, os.environ if environ is None else environ)
    if token is None:
        return Security(tls, None, None)
    return Security(tls, StaticTokenClient(token), StaticTokenVerifier(token) if serving else None)


def parse_args_with_security(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, serving: bool
) -> tuple[argparse.Namespace, Security]:
    """``parser.parse_args(argv)`` and :func:`security_from_args`; a bad security option
    prints ``<prog>: error: <message>`` (one line) and exits with status 2."""
    args = parser.parse_args(argv)
    try:
        return args, security_from_args(args, serving=serving)
    except SecurityOptionError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


# -- TLS ----------------------------------------------------------------------------------------
def _tls_from_args(args: argparse.Namespace, *, serving: bool) -> TlsConfig | None:
    ca: str = args.tls_ca or ""
    cert: str = args.tls_cert or ""
    key: str = args.tls_key or ""
    server_name: str = getattr(args, "tls_server_name", None) or ""
    mutual: bool = args.mtls
    if not (args.tls or ca or cert or key or server_name or mutual):
        return None
    if cert and not key:
        raise SecurityOptionError("--tls-cert needs --tls-key (the certificate's private key)")
    if key and not cert:
        raise SecurityOptionError("--tls-key needs --tls-cert (the key's certificate)")
    if mutual and not ca:
        raise SecurityOptionError(
            "--mtls needs --tls-ca (the CA that client certificates must chain to)"
            if serving else "--mtls needs --tls-ca (the CA that the nodes' certificates chain to)"
        )
    if serving and not cert:
        used = [name for name, on in (("--tls", args.tls), ("--tls-ca", ca), ("--mtls", mutual))
                if on]
        raise SecurityOptionError(
            f"{'/'.join(used)} needs --tls-cert and --tls-key: a node serves TLS with its "
            "certificate"
        )
    if mutual and not cert:
        raise SecurityOptionError(
            "--mtls needs --tls-cert and --tls-key (the client certificate the nodes require)"
        )
    for option, path in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)):
        if path:
            _check_readable(option, path)
    if server_name and not all(0x21 <= ord(c) <= 0x7E for c in server_name):
        raise SecurityOptionError(f"--tls-server-name {server_name!r} is not a host name")
    # Load the files the way the transport will, to report bad contents now.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            probe.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError) as exc:
            raise SecurityOptionError(f"--tls-ca {ca}: not a PEM CA bundle ({_why(exc)})") from None
    if cert:

        def encrypted() -> bytes:  # OpenSSL would prompt for a passphrase on the terminal
            raise SecurityOptionError(f"--tls-key {key}: the key is encrypted (a node or "
                                      "client needs it unencrypted)")

        try:
            probe.load_cert_chain(cert, key, password=encrypted)
        except ssl.SSLError as exc:
            raise SecurityOptionError(
                f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its private "
                f"key ({_why(exc)})"
            ) from None
    tls = TlsConfig(cert_file=cert, key_file=key, ca_file=ca, mutual=mutual and serving,
                    server_name=server_name)
    try:
        tls.client_context()
        if serving:
            tls.server_context()
    except (OSError, ssl.SSLError, ValueError) as exc:  # pragma: no cover - checked above
        raise SecurityOptionError(f"unusable TLS settings: {_why(exc)}") from None
    return tls


def _check_readable(option: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise SecurityOptionError(f"{option} {path}: cannot read it ({exc.strerror})") from None


def _why(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


# -- tokens -------------------------------------------------------------------------------------
def _token_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    file: str | None = args.token_file
    var: str | None = args.token_env
    if file is not None and var is not None:
        raise SecurityOptionError("give the token with --token-file or --token-env, not both")
    if file is not None:
        source = f"--token-file {file}"
        try:
            raw = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecurityOptionError(f"{source}: cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise SecurityOptionError(f"{source}: not UTF-8 text") from None
    elif var is not None:
        source = f"--token-env {var}"
        if not var:
            raise SecurityOptionError("--token-env needs the name of an environment variable")
        if var not in environ:
            raise SecurityOptionError(f"{source}: the environment variable is not set")
        raw = environ[var]
    else:
        return None
    token = raw.strip()
    if not token:
        raise SecurityOptionError(f"{source}: the token is empty")
    if not all(0x20 <= ord(c) <= 0x7E for c in token):
        raise SecurityOptionError(
            f"{source}: the token must be printable ASCII on one line (it is sent as a gRPC "
            "header)"
        )
    return token
