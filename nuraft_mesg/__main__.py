"""``python -m nuraft_mesg <command>``: the command line of :mod:`nuraft_mesg.cli.main`."""

from __future__ import annotations

import sys

from nuraft_mesg.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
