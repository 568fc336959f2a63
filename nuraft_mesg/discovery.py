"""Peer discovery for nodes on separate hosts: two ready :class:`MessagingApplication` s.

* :class:`PeersFileApplication` reads ``uuid -> host:port`` from a TOML file (the same file on
  every node, e.g. a mounted Kubernetes ConfigMap) and rereads it when it changes.
* :class:`DnsApplication` builds a DNS name from a template (``{uuid}.nuraft.internal:7000`` or,
  for a StatefulSet behind a headless Service, ``nuraft-{ordinal}.nuraft.default.svc:7000``).

Both only *name* a peer; the transport resolves the name with trio's ``getaddrinfo`` each time it
opens a channel, so a node that comes back with a new IP address is found on reconnect, and
``trio.socket.set_custom_hostname_resolver`` is the hook that tests (or an application with its
own service discovery) use to answer those look-ups.  Lookups happen when a channel is opened,
not per message, so a ``stat`` per lookup costs nothing that matters.

State managers are kept in memory as in :class:`~nuraft_mesg.app.InMemoryApplication`; a
Manager with ``data_dir`` keeps its groups in its durable store instead.
"""

from __future__ import annotations

import logging
import os
import tomllib
import uuid as uuidlib
from collections.abc import Callable, Sequence
from pathlib import Path
from string import Formatter

from nuraft_mesg.app import InMemoryApplication
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.transport.grpc import parse_address

__all__ = ["DnsApplication", "PeersFileApplication", "load_peers_file"]

log = logging.getLogger("nuraft_mesg.discovery")


def _check_uuid(text: str, where: str) -> None:
    try:
        uuidlib.UUID(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a uuid") from None


def load_peers_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``[peers]`` table of a TOML peers file, validated.  Raises ``ValueError`` (with the
    file name) on a file that cannot be read, is not TOML, or holds a bad uuid or address::

        [peers]
        "5f0c...-uuid-of-node-1" = "10.0.0.1:7000"
        "8a1d...-uuid-of-node-2" = "node-2.example.internal:7000"
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"peers file {os.fspath(path)}: {exc}") from None
    peers = data.get("peers")
    if not isinstance(peers, dict):
        raise ValueError(f"peers file {os.fspath(path)}: no [peers] table")
    table: dict[str, str] = {}
    for peer_uuid, address in peers.items():
        _check_uuid(peer_uuid, f"peers file {os.fspath(path)}")
        if not isinstance(address, str):
            raise ValueError(f"peers file {os.fspath(path)}: {peer_uuid} = {address!r} "
                             "is not a \"host:port\" string")
        try:
            parse_address(address)
        except ValueError as exc:
            raise ValueError(f"peers file {os.fspath(path)}: {peer_uuid}: {exc}") from None
        table[peer_uuid] = address
    return table


class PeersFileApplication(InMemoryApplication):
    """Peers from a TOML peers file (see :func:`load_peers_file`), reread when it changes.

    The file is checked (``stat``: mtime, size and inode, so that a ConfigMap's atomic symlink
    swap counts) on every lookup.  A changed file that does not parse keeps the last good table
    and logs a warning: a half-written file must not make every peer unknown.  A bad file at
    start-up raises ``ValueError``.
    """

    def __init__(
        self,
        server_uuid: str,
        path: str | os.PathLike[str],
        *,
        state_machine_factory: Callable[[], StateMachine] = KVStateMachine,
    ) -> None:
        super().__init__(server_uuid, load_peers_file(path),
                         state_machine_factory=state_machine_factory)
        self.path = Path(path)
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload_if_changed(self) -> bool:
        """Reread the file if it changed since the last read; True when the table changed."""
        seen = self._signature()
        if seen is None or seen == self._seen:
            return False
        self._seen = seen
        try:
            table = load_peers_file(self.path)
        except ValueError as exc:
            log.warning("%s; keeping the previous %d peers", exc, len(self.directory))
            return False
        if table == self.directory:
            return False
        log.info("peers file %s reloaded: %d peers", self.path, len(table))
        self.directory.clear()
        self.directory.update(table)
        return True

    def lookup_peer(self, peer_id: str) -> str:
        self.reload_if_changed()
        return super().lookup_peer(peer_id)

    def peers(self) -> list[str]:
        self.reload_if_changed()
        return super().peers()


class DnsApplication(InMemoryApplication):
    """Peers named by a DNS template; ``members`` are the nodes' uuids in ordinal order.

    ``template`` is a :meth:`str.format` string with the fields ``{uuid}`` and ``{ordinal}``
    (the uuid's index in ``members``, as a StatefulSet numbers its pods): for example
    ``"nuraft-{ordinal}.nuraft.default.svc.cluster.local:7000"``.  Without a ``:port`` the
    name gets ``default_port``.  A peer that is not a member (so has no ordinal) is unknown
    (``""``) when the template needs one; with ``{uuid}`` alone any uuid resolves.
    """

    def __init__(
        self,
        server_uuid: str,
        template: str,
        members: Sequence[str] = (),
        *,
        default_port: int | None = None,
        state_machine_factory: Callable[[], StateMachine] = KVStateMachine,
    ) -> None:
        super().__init__(server_uuid, state_machine_factory=state_machine_factory)
        fields = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
        if not fields or not fields <= {"uuid", "ordinal"}:
            raise ValueError(f"DNS template {template!r}: use the fields {{uuid}} and/or "
                             f"{{ordinal}}, got {sorted(fields)}")
        for member in members:
            _check_uuid(member, "DNS members")
        if len(set(members)) != len(members):
            raise ValueError("DNS members: a uuid is listed twice")
        if "ordinal" in fields and not members:
            raise ValueError(f"DNS template {template!r} uses {{ordinal}}: list the members")
        self.template = template
        self.members = list(members)
        self.default_port = default_port
        self._ordinals = {m: i for i, m in enumerate(members)}
        self._needs_ordinal = "ordinal" in fields
        # Fail now, not at the first connect, if the template cannot give host:port.
        probe = self.members[0] if self._needs_ordinal else server_uuid
        if not self._name(probe):
            raise ValueError(f"DNS template {template!r} gives no host:port "
                             "(add :PORT to it or pass default_port)")

    def _name(self, peer_id: str) -> str:
        try:
            _check_uuid(peer_id, "peer")
        except ValueError:
            return ""  # never put an arbitrary key into a DNS name
        ordinal = self._ordinals.get(peer_id)
        if ordinal is None and self._needs_ordinal:
            return ""
        name = self.template.format(uuid=peer_id, ordinal=ordinal)
        try:
            parse_address(name)
        except ValueError:
            if self.default_port is None:
                return ""
            name = f"{name}:{self.default_port}"
        return name

    def lookup_peer(self, peer_id: str) -> str:
        return self._name(peer_id)

    def peers(self) -> list[str]:
        """The other members (what ``--create-group`` adds)."""
        return [m for m in self.members if m != self.server_uuid]
