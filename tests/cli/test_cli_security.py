"""The command line's TLS and token options (nuraft_mesg.cli.security): ``status`` against a
node with TLS, mutual TLS and a token verifier (a Manager in this process, or a ``server``
process started with the same options), and the one-line errors of bad combinations.

``status`` runs in a worker thread (it calls ``trio.run`` itself) while the node serves in the
test's trio run; the certificates are the security tests' (trustme, tests/security)."""

from __future__ import annotations

import argparse
import io
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization

import nuraft_mesg
from nuraft_mesg.app import InMemoryApplication
from nuraft_mesg.cli.remote import client_main, client_parser, status_main, status_parser
from nuraft_mesg.cli.security import Security, security_from_args
from nuraft_mesg.cli.server import _parser as server_parser
from nuraft_mesg.manager import Manager, ManagerConfig
from nuraft_mesg.transport import security as security_module
from nuraft_mesg.transport.base import Status
from nuraft_mesg.transport.security import StaticTokenClient, StaticTokenVerifier, TlsConfig
from tests.security import Certs, make_certs

from . import PYTHON, children, run

TOKEN = "cli-s3cret"
TOKEN_VAR = "NURAFT_MESG_TEST_TOKEN"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")  # a trailing newline, as editors write it
    return str(path)


@asynccontextmanager
async def tls_node(certs: Certs, *, mutual: bool = False) -> AsyncIterator[tuple[str, str]]:
    """A real node (a Manager on loopback) serving TLS and requiring TOKEN: (uuid, address)."""
    me = str(uuid.uuid4())
    config = ManagerConfig(server_uuid=me, ssl_cert=certs.node_cert, ssl_key=certs.node_key,
                           ssl_ca=certs.ca, ssl_mutual=mutual,
                           token_verifier=StaticTokenVerifier(TOKEN))
    async with Manager(config, InMemoryApplication(me)) as mgr:
        yield me, f"127.0.0.1:{mgr.port}"


async def status(*argv: str) -> tuple[int, str]:
    """``nuraft-mesg status --json ARGV`` in a worker thread: (exit code, stdout)."""
    out = io.StringIO()
    with trio.fail_after(30):
        rc = await trio.to_thread.run_sync(status_main, ["--json", "--timeout", "5", *argv], out)
    return rc, out.getvalue()


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- against a node in this process ---------------------------------------------------------------
@pytest.mark.parametrize("source", ["file", "env"])
async def test_status_over_tls_with_token(
    certs: Certs, token_file: str, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VAR, f"  {TOKEN}\n")
    token = ["--token-file", token_file] if source == "file" else ["--token-env", TOKEN_VAR]
    async with tls_node(certs) as (me, address):
        rc, out = await status("--server", address, "--tls-ca", certs.ca, *token)
    assert rc == 0
    assert json.loads(out)["server_uuid"] == me


async def test_status_without_token_is_unauthenticated(
    certs: Certs, token_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    async with tls_node(certs) as (_, address):
        rc, out = await status("--server", address, "--tls-ca", certs.ca)
        assert (rc, out) == (1, "")
        line = error_line(capsys)
        assert line.startswith("error: UNAUTHENTICATED: ")
        assert "missing authorization header" in line and "--token-file" in line

        rc, out = await status("--server", address, "--tls-ca", certs.ca,
                               "--token-file", str(wrong))
        assert (rc, out) == (1, "")
        line = error_line(capsys)
        assert line.startswith("error: UNAUTHENTICATED: ")
        assert "invalid token" in line

        rc, _ = await status("--server", address, "--tls-ca", certs.ca, "--token-file", token_file)
        assert rc == 0  # the same node, with the token


async def test_status_without_tls_against_a_tls_node_fails(
    certs: Certs, token_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with tls_node(certs) as (_, address):
        rc, out = await status("--server", address, "--token-file", token_file)
        assert (rc, out) == (1, "")
        assert "UNAVAILABLE" in error_line(capsys)  # the node drops the connection
        # A CA that does not vouch for the node fails the same way.
        rc, _ = await status("--server", address, "--tls-ca", certs.other_ca,
                             "--token-file", token_file)
        assert rc == 1
        assert "UNAVAILABLE" in error_line(capsys)
        rc, _ = await status("--server", address, "--tls-ca", certs.ca, "--token-file", token_file)
        assert rc == 0  # the same node, over TLS


async def test_status_with_mutual_tls(
    certs: Certs, token_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = ["--tls-ca", certs.ca, "--token-file", token_file]
    async with tls_node(certs, mutual=True) as (me, address):
        rc, _ = await status("--server", address, *creds)
        assert rc == 1  # no client certificate: dropped during the handshake
        assert "UNAVAILABLE" in error_line(capsys)
        rc, _ = await status("--server", address, *creds, "--tls-cert", certs.other_cert,
                             "--tls-key", certs.other_key)
        assert rc == 1  # a certificate from another CA
        error_line(capsys)
        rc, out = await status("--server", address, *creds, "--mtls",
                               "--tls-cert", certs.client_cert, "--tls-key", certs.client_key)
        assert rc == 0
        assert json.loads(out)["server_uuid"] == me


async def test_status_with_server_name(certs: Certs, token_file: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    creds = ["--tls-ca", certs.ca, "--token-file", token_file]
    async with tls_node(certs) as (_, address):
        rc, _ = await status("--server", address, *creds, "--tls-server-name", "localhost")
        assert rc == 0  # the node's certificate names localhost too
        rc, _ = await status("--server", address, *creds, "--tls-server-name", "elsewhere.example")
        assert rc == 1  # not the name on the node's certificate
        assert "UNAVAILABLE" in error_line(capsys)


# -- the server subcommand ----------------------------------------------------------------------
async def test_server_process_with_mutual_tls_and_token(
    certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_VAR, TOKEN)  # inherited by the child
    me = str(uuid.uuid4())
    with trio.fail_after(45):
        async with children() as kids:
            node = await kids.spawn(
                "server", PYTHON, "-m", "nuraft_mesg", "-v", "server", "--uuid", me,
                "--data-dir", str(tmp_path / "data"), "--tls-cert", certs.node_cert,
                "--tls-key", certs.node_key, "--tls-ca", certs.ca, "--mtls",
                "--token-env", TOKEN_VAR,
            )
            match = await node.wait_line(r"serving on (127\.0\.0\.1:\d+) \((.*)\)")
            address, mode = match.group(1), match.group(2)
            assert mode == "mutual TLS, token required"
            client_cert = ["--tls-cert", certs.client_cert, "--tls-key", certs.client_key]

            rc, out = await status("--server", address, "--tls-ca", certs.ca, *client_cert,
                                   "--token-env", TOKEN_VAR)
            assert rc == 0, capsys.readouterr().err
            assert json.loads(out)["server_uuid"] == me

            rc, _ = await status("--server", address, "--tls-ca", certs.ca, *client_cert)
            assert rc == 1
            assert error_line(capsys).startswith("error: UNAUTHENTICATED: ")

            rc, _ = await status("--server", address, "--tls-ca", certs.ca,
                                 "--token-env", TOKEN_VAR)
            assert rc == 1  # no client certificate
            error_line(capsys)

            assert await node.stop() == 0, node.output


# -- bad combinations: exit status 2 and one line, before anything starts ------------------------
def _bad_cases(certs: Certs, tmp_path: Path) -> list[tuple[list[str], str]]:
    """Bad for every subcommand: (options, message)."""
    empty = tmp_path / "empty-token"
    empty.write_text(" \n")
    two_lines = tmp_path / "two-lines"
    two_lines.write_text("abc\ndef\n")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = str(tmp_path / "missing.pem")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(serialization.load_pem_private_key(
        Path(certs.node_key).read_bytes(), password=None,
    ).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"passphrase")))
    return [
        (["--tls-cert", certs.node_cert, "--tls-ca", certs.ca], "--tls-cert needs --tls-key"),
        (["--tls-key", certs.node_key, "--tls-ca", certs.ca], "--tls-key needs --tls-cert"),
        (["--mtls", "--tls-cert", certs.node_cert, "--tls-key", certs.node_key],
         "--mtls needs --tls-ca"),
        (["--tls-cert", certs.node_cert, "--tls-key", certs.node_key, "--tls-ca", missing],
         f"--tls-ca {missing}: cannot read it (No such file or directory)"),
        (["--tls-cert", missing, "--tls-key", certs.node_key],
         f"--tls-cert {missing}: cannot read it"),
        (["--tls-cert", certs.node_cert, "--tls-key", certs.node_key, "--tls-ca", str(garbage)],
         "not a PEM CA bundle"),
        (["--tls-cert", certs.node_cert, "--tls-key", certs.client_key],
         "not a PEM certificate and its private key"),
        (["--tls-cert", certs.node_cert, "--tls-key", str(encrypted)], "the key is encrypted"),
        (["--token-file", missing], f"--token-file {missing}: cannot read it"),
        (["--token-file", str(empty)], "the token is empty"),
        (["--token-file", str(two_lines)], "printable ASCII on one line"),
        (["--token-env", "NURAFT_MESG_TEST_UNSET"], "environment variable is not set"),
        (["--token-env", TOKEN_VAR], f"--token-env {TOKEN_VAR}: the token is empty"),
        (["--token-env", TOKEN_VAR, "--token-file", str(empty)], "not both"),
    ]


NODE = "127.0.0.1:1"  # nothing listens there: reaching it would fail with exit status 1


@pytest.mark.parametrize("command", ["status", "client"])
def test_bad_combinations_exit_2_with_one_line(
    command: str, certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_VAR, "")
    monkeypatch.delenv("NURAFT_MESG_TEST_UNSET", raising=False)
    cases = [
        *_bad_cases(certs, tmp_path),
        (["--mtls", "--tls-ca", certs.ca], "--mtls needs --tls-cert and --tls-key"),
    ]
    main = status_main if command == "status" else client_main
    base = ["--server", NODE, "--timeout", "1"]
    if command == "client":
        base += ["-g", str(uuid.uuid4()), "-m", "x"]
    for options, message in cases:
        with pytest.raises(SystemExit) as exited:
            main([*base, *options], io.StringIO())
        assert exited.value.code == 2, options
        line = error_line(capsys)
        assert line.startswith(f"nuraft-mesg {command}: error: "), line
        assert message in line, (options, line)


async def test_bad_combinations_of_processes_exit_2(certs: Certs, tmp_path: Path) -> None:
    """The real commands, ``server`` included (which would otherwise start serving)."""
    env_unset = ["--token-env", "NURAFT_MESG_TEST_UNSET"]
    server = ["server", "--uuid", str(uuid.uuid4()), "--data-dir", str(tmp_path / "data")]
    cases: list[tuple[list[str], str]] = [
        ([*server, "--tls-ca", certs.ca], "--tls-ca needs --tls-cert and --tls-key"),
        ([*server, "--tls"], "--tls needs --tls-cert and --tls-key"),
        ([*server, "--mtls", "--tls-cert", certs.node_cert, "--tls-key", certs.node_key],
         "--mtls needs --tls-ca"),
        ([*server, "--tls-cert", certs.node_cert], "--tls-cert needs --tls-key"),
        ([*server, *env_unset], "environment variable is not set"),
        (["status", "--server", NODE, "--tls-key", certs.node_key], "--tls-key needs --tls-cert"),
    ]
    for argv, message in cases:
        done = await run(PYTHON, "-m", "nuraft_mesg", *argv)
        lines = done.stderr.decode().strip().splitlines()
        assert done.returncode == 2, (argv, lines)
        assert len(lines) == 1 and message in lines[0], (argv, lines)
        assert lines[0].startswith(f"nuraft-mesg {argv[0]}: error: ")


# -- the mapping onto the library's types --------------------------------------------------------
def _security(parser: argparse.ArgumentParser, argv: Sequence[str], *, serving: bool,
              environ: dict[str, str] | None = None) -> Security:
    return security_from_args(parser.parse_args(argv), serving=serving, environ=environ or {})


def test_client_options_map_onto_tls_config_and_token_client(certs: Certs) -> None:
    plain = _security(status_parser(), ["--server", NODE], serving=False)
    assert plain == Security(None, None, None)

    system = _security(status_parser(), ["--server", NODE, "--tls"], serving=False)
    assert system.tls == TlsConfig()  # TLS against the system's trust store

    sec = _security(
        client_parser(),
        ["--server", NODE, "-g", "g", "-m", "x", "--tls-ca", certs.ca, "--tls-cert",
         certs.client_cert, "--tls-key", certs.client_key, "--tls-server-name", "node.example",
         "--mtls", "--token-env", "T"],
        serving=False, environ={"T": TOKEN},
    )
    assert sec.tls == TlsConfig(cert_file=certs.client_cert, key_file=certs.client_key,
                                ca_file=certs.ca, server_name="node.example")
    assert isinstance(sec.token_client, StaticTokenClient)
    assert sec.token_client.auth_header_key == "authorization"
    assert sec.token_client.get_token() == f"Bearer {TOKEN}"
    assert sec.token_verifier is None  # a client verifies nobody


def test_server_options_map_onto_tls_config_and_a_token_pair(certs: Certs) -> None:
    base = ["--uuid", str(uuid.uuid4()), "--data-dir", "d"]
    plain = _security(server_parser(), base, serving=True)
    assert plain == Security(None, None, None)
    sec = _security(
        server_parser(),
        [*base, "--tls-cert", certs.node_cert, "--tls-key", certs.node_key, "--tls-ca",
         certs.ca, "--mtls", "--token-env", "T"],
        serving=True, environ={"T": f"{TOKEN}\n"},
    )
    assert sec.tls == TlsConfig(cert_file=certs.node_cert, key_file=certs.node_key,
                                ca_file=certs.ca, mutual=True)
    assert sec.token_client is not None
    assert sec.token_client.get_token() == f"Bearer {TOKEN}"
    assert sec.token_verifier is not None
    assert sec.token_verifier.verify({"authorization": f"Bearer {TOKEN}"}) == Status.OK
    refused = sec.token_verifier.verify({"authorization": "Bearer other"})
    assert refused == (Status.UNAUTHENTICATED, "invalid token")


def test_help_lists_the_security_options() -> None:
    for parser in (status_parser(), client_parser(), server_parser()):
        text = parser.format_help()
        for option in ("--tls-ca", "--tls-cert", "--tls-key", "--mtls", "--token-file",
                       "--token-env"):
            assert option in text, (parser.prog, option)
        assert "--token " not in text and "--token=" not in text
    assert "--tls-server-name" in status_parser().format_help()
    assert "--tls-server-name" in client_parser().format_help()


def test_security_types_are_exported() -> None:
    for name in ("TlsConfig", "TokenClient", "TokenVerifier", "StaticTokenClient",
                 "StaticTokenVerifier"):
        assert name in nuraft_mesg.__all__
        assert getattr(nuraft_mesg, name) is getattr(security_module, name)
    assert nuraft_mesg.__all__ == sorted(nuraft_mesg.__all__)
