"""``python tests/storage/slow_disk_node.py <nuraft-mesg args>``: the ``nuraft-mesg`` command
with a slow disk -- every commit of the durable store waits 2-20 ms before it starts.

The kill -9 test runs its nodes through this.  SIGKILL does not drop the operating system's
page cache, so data is lost only if the process dies between a write being queued and SQLite
handing it to the OS; a slow disk widens that window from microseconds to milliseconds, so a
store that acknowledged writes before committing them would be caught.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence

from nuraft_mesg.cli.main import main
from nuraft_mesg.storage.sqlite import SqliteStore

_real_commit = SqliteStore._commit_blocking


def _slow_commit(self: SqliteStore, batch: Sequence[object]) -> None:
    time.sleep(random.uniform(0.002, 0.02))
    _real_commit(self, batch)  # type: ignore[arg-type]


if __name__ == "__main__":
    SqliteStore._commit_blocking = _slow_commit  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
