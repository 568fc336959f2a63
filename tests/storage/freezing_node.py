"""``python tests/storage/freezing_node.py <nuraft-mesg args>``: the ``nuraft-mesg`` command
whose KV state machine hangs the whole process when it applies :data:`FREEZE` while the file
``<data-dir>/freeze`` exists (after creating ``<data-dir>/frozen``).

The session test freezes the leader this way: the write is committed and applied there, but
its answer never leaves -- until the test kills the process with SIGKILL, which is exactly the
moment a client cannot tell whether its write was applied.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from nuraft_mesg.cli.main import main
from nuraft_mesg.storage.memory import KVStateMachine

FREEZE = b"set frozen 1"

_real_commit = KVStateMachine.commit


def _data_dir(argv: list[str]) -> Path:
    return Path(argv[argv.index("--data-dir") + 1])


def _freezing_commit(self: KVStateMachine, index: int, data: bytes) -> bytes:
    result = _real_commit(self, index, data)
    data_dir = _data_dir(sys.argv)
    if data == FREEZE and (data_dir / "freeze").exists():
        (data_dir / "frozen").touch()
        time.sleep(120)  # the process hangs (blocks its event loop) until it is killed
    return result


if __name__ == "__main__":
    KVStateMachine.commit = _freezing_commit  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
