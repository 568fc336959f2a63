#!/usr/bin/env python3
"""Readiness of one node, for container probes: ``nuraft-ready --server HOST:PORT [options]``.

Ready means the node answers ``Admin/Status`` and, in every group it hosts, knows a leader and
has applied all but at most ``--max-lag`` (default 100) of the entries it knows are committed.
Why more than "it answers": a rolling upgrade restarts the next node once this one is ready,
and a node that has not caught up yet cannot help a majority commit; restarting another one
meanwhile would stall the group.  A node that hosts no group yet (not added anywhere) is ready.

Every option but ``--max-lag`` goes to ``nuraft-mesg status`` (``--server``, ``--timeout`` and
the TLS and token options).  Exit status 0: ready; 1: not ready (the reason on stderr).
"""

from __future__ import annotations

import json
import subprocess
import sys


def not_ready(status: dict[str, object], max_lag: int) -> list[str]:
    """Why the node whose ``nuraft-mesg status --json`` output is ``status`` is not ready."""
    reasons = []
    groups = status.get("groups")
    assert isinstance(groups, list)
    for group in groups:
        gid = group["group_id"]
        if not group["leader_id"]:
            reasons.append(f"group {gid}: no leader known")
        elif group["commit_index"] - group["applied_index"] > max_lag:
            reasons.append(f"group {gid}: applied {group['applied_index']} of "
                           f"{group['commit_index']} committed entries")
    return reasons


def main(argv: list[str]) -> int:
    max_lag = 100
    if "--max-lag" in argv:
        at = argv.index("--max-lag")
        max_lag = int(argv[at + 1])
        argv = argv[:at] + argv[at + 2:]
    done = subprocess.run([sys.executable, "-m", "nuraft_mesg", "status", "--json", *argv],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        print(f"not ready: {done.stderr.strip() or 'status failed'}", file=sys.stderr)
        return 1
    reasons = not_ready(json.loads(done.stdout), max_lag)
    for reason in reasons:
        print(f"not ready: {reason}", file=sys.stderr)
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
