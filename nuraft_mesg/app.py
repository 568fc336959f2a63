"""A ready-made :class:`~nuraft_mesg.manager.MessagingApplication` for tests, demos and a
first program: a peer directory in a dict and in-memory state managers.

The state managers it creates are kept (per group), so a Manager restarted with the same
application object rejoins its groups from the state they persisted, as a real application
would from disk.
"""

from __future__ import annotations

from collections.abc import Callable

from nuraft_mesg.storage.interfaces import StateMachine, StateManager
from nuraft_mesg.storage.memory import KVStateMachine, MemoryStateManager

__all__ = ["InMemoryApplication"]


class InMemoryApplication:
    """Peers resolved from ``directory`` (uuid -> "host:port", shareable between several
    applications in one process); state managers kept in memory."""

    def __init__(
        self,
        server_uuid: str,
        directory: dict[str, str] | None = None,
        *,
        state_machine_factory: Callable[[], StateMachine] = KVStateMachine,
    ) -> None:
        self.server_uuid = server_uuid
        self.directory: dict[str, str] = directory if directory is not None else {}
        self.state_machine_factory = state_machine_factory
        self.state_managers: dict[str, MemoryStateManager] = {}

    def lookup_peer(self, peer_id: str) -> str:
        return self.directory.get(peer_id, "")

    def peers(self) -> list[str]:
        """The other nodes this application knows (what ``server --create-group`` adds)."""
        return [p for p in self.directory if p != self.server_uuid]

    def create_state_mgr(self, server_id: int, group_id: str) -> StateManager:
        smgr = self.state_managers.get(group_id)
        if smgr is None or smgr.destroyed:
            smgr = MemoryStateManager(
                server_id, self.server_uuid, state_machine=self.state_machine_factory()
            )
            self.state_managers[group_id] = smgr
        return smgr
