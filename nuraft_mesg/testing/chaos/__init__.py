"""A fault-injection rig on real node processes and real network faults (issue J).

``python3 tools/dev.py chaos [--nodes 3|5] [--minutes M] [--seed S] [--groups N]`` (or
``python -m nuraft_mesg.testing.chaos``) runs :func:`~nuraft_mesg.testing.chaos.rig.run`:
nodes in their own network namespaces (:mod:`.net`), a seeded nemesis, clients recording a
history (:mod:`.history`), and the checks of :mod:`.checks`.  It needs root (namespaces,
iptables, tmpfs); elsewhere it falls back to loopback with the process faults only.
See docs/chaos.md.
"""

from nuraft_mesg.testing.chaos.rig import NEMESES, Report, RigConfig, run

__all__ = ["NEMESES", "Report", "RigConfig", "run"]
