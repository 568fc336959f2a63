"""The rig's network: one Linux network namespace per node on a bridge, and the faults.

Layout (``setup``)::

    root namespace: bridge nmc<tag>  10.<a>.<b>.1/24   (the rig, its clients, the delay proxies)
    namespace nmc<tag>-<i>: eth0      10.<a>.<b>.<10+i>/24   (node i)

Every fault is a set of iptables rules in the sending node's namespace, each namespace having
its own netfilter tables (so healing is flushing the rig's chains there):

* a partition is "node a sends nothing to node b" (``DROP`` in a's OUTPUT, for b's address);
  a two-way partition blocks both directions.  TCP then breaks both ways, as on real hosts;
* loss: ``-m statistic --mode random --probability p -j DROP`` on a node's egress;
* duplication: ``-j TEE --gateway <dst>`` clones a random share of the packets to each peer;
* delay with jitter: this kernel's ``tc`` has no ``netem`` (checked by :func:`probe_netem`),
  so connections between nodes are NAT-ed (``DNAT`` in the sender's namespace) through a
  per-link delaying TCP proxy run by the rig (:mod:`.proxy`); connections made before the
  fault are reset (``REJECT --reject-with tcp-reset``) so every stream takes the slow path.
  ``netem`` is used instead when the kernel has it.

Reordering is not offered: without ``netem`` it cannot be done below TCP, and above TCP a
stream cannot be reordered (TCP hides packet reordering from the nodes either way).

iptables is installed from Debian's packages (``apt-get install -y iptables``) when missing;
``iptables-legacy`` is preferred (this kernel has the legacy ``ip_tables`` and no nf_tables).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Net", "NetUnavailable", "probe"]

NODE_PORT = 7100
"""Every node serves RaftStep on this port, on its own address."""
PROXY_BASE = 21000
_CHAIN = "NMCHAOS"


class NetUnavailable(RuntimeError):
    """The rig cannot build its network here (not root, no ``ip``/``iptables``)."""


def _run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def probe() -> str:
    """Why network namespaces cannot be used here ("" when they can)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "not a POSIX system"
    if os.geteuid() != 0:
        return "not root (network namespaces and iptables need root)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return ""


def ensure_iptables() -> str:
    """The iptables command to use, installing Debian's package when it is missing."""
    for name in ("iptables-legacy", "iptables"):
        path = shutil.which(name)
        if path and _run([path, "-w", "-L", "-n"], check=False).returncode == 0:
            return path
    if shutil.which("apt-get") is None:
        raise NetUnavailable("no iptables and no apt-get to install it")
    print("chaos: installing iptables (apt-get install -y iptables)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "-q", "iptables"], env=env,
                      capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        if subprocess.run(["apt-get", "install", "-y", "-q", "iptables"], env=env,
                          capture_output=True).returncode != 0:
            raise NetUnavailable("apt-get install iptables failed")
    for name in ("iptables-legacy", "iptables"):
        path = shutil.which(name)
        if path and _run([path, "-w", "-L", "-n"], check=False).returncode == 0:
            return path
    raise NetUnavailable("iptables was installed but does not work with this kernel")


def probe_netem(ns: str) -> bool:
    """Whether this kernel's tc has the netem qdisc (tried on ``ns``'s eth0)."""
    ok = _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root",
               "netem", "delay", "0ms"], check=False).returncode == 0
    if ok:
        _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root"],
             check=False)
    return ok


@dataclass
class Net:
    """``n`` node namespaces on a bridge (see the module doc).  ``tag`` names them so that
    two rigs never collide, and ``teardown`` removes everything ``setup`` made."""

    n: int
    tag: str
    subnet: tuple[int, int] = (77, 0)
    iptables: str = ""
    netem: bool = False
    _made_ns: list[str] = field(default_factory=list)
    _bridge_made: bool = False
    blocked: set[tuple[int, int]] = field(default_factory=set)
    namespaced: bool = True

    @property
    def bridge(self) -> str:
        return f"nmc{self.tag}"

    @property
    def gateway(self) -> str:
        return f"10.{self.subnet[0]}.{self.subnet[1]}.1"

    def ns(self, i: int) -> str:
        return f"nmc{self.tag}-{i}"

    def ip(self, i: int) -> str:
        return f"10.{self.subnet[0]}.{self.subnet[1]}.{10 + i}"

    def address(self, i: int) -> str:
        return f"{self.ip(i)}:{NODE_PORT}"

    def proxy_port(self, src: int, dst: int) -> int:
        return PROXY_BASE + 10 * src + dst

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    # -- set-up and teardown -------------------------------------------------------------------
    def setup(self) -> None:
        why = probe()
        if why:
            raise NetUnavailable(why)
        self.iptables = ensure_iptables()
        self.teardown()  # leftovers of an earlier run with this tag
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._bridge_made = True
        _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i in range(self.n):
            ns = self.ns(i)
            _run(["ip", "netns", "add", ns])
            self._made_ns.append(ns)
            veth = f"{self.bridge}v{i}"
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                  "netns", ns])
            _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            for table, hook in (("filter", "OUTPUT"), ("nat", "OUTPUT"),
                                ("mangle", "POSTROUTING")):
                self._ipt(i, "-t", table, "-N", _CHAIN)
                self._ipt(i, "-t", table, "-A", hook, "-j", _CHAIN)
        self.netem = probe_netem(self.ns(0))

    def teardown(self) -> None:
        """Remove the namespaces (their veths and rules go with them) and the bridge."""
        listed = _run(["ip", "netns", "list"], check=False).stdout.split()
        for i in range(self.n):
            if self.ns(i) in listed or self.ns(i) in self._made_ns:
                _run(["ip", "netns", "del", self.ns(i)], check=False)
        self._made_ns.clear()
        if _run(["ip", "link", "show", self.bridge], check=False).returncode == 0:
            _run(["ip", "link", "del", self.bridge], check=False)
        self._bridge_made = False

    def _ipt(self, i: int, *args: str, check: bool = True) -> None:
        _run([*self.exec_prefix(i), self.iptables, "-w", *args], check=check)

    # -- faults --------------------------------------------------------------------------------
    def block(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Node ``a`` sends nothing to node ``b`` for every ``(a, b)``."""
        for a, b in pairs:
            if (a, b) not in self.blocked:
                self._ipt(a, "-A", _CHAIN, "-d", self.ip(b), "-j", "DROP")
                self.blocked.add((a, b))

    def loss(self, nodes: Iterable[int], probability: float) -> None:
        for i in nodes:
            self._ipt(i, "-A", _CHAIN, "-o", "eth0", "-m", "statistic", "--mode", "random",
                      "--probability", f"{probability:.3f}", "-j", "DROP")

    def duplicate(self, nodes: Iterable[int], probability: float) -> None:
        for i in nodes:
            for j in range(self.n):
                if j != i:
                    self._ipt(i, "-t", "mangle", "-A", _CHAIN, "-d", self.ip(j), "-m",
                              "statistic", "--mode", "random", "--probability",
                              f"{probability:.3f}", "-j", "TEE", "--gateway", self.ip(j))

    def route_through_proxies(self, links: Iterable[tuple[int, int]]) -> None:
        """New connections ``a -> b`` go to the rig's proxy for the link; the current ones
        are reset."""
        for a, b in links:
            self._ipt(a, "-t", "nat", "-A", _CHAIN, "-p", "tcp", "-d", self.ip(b), "--dport",
                      str(NODE_PORT), "-j", "DNAT", "--to-destination",
                      f"{self.gateway}:{self.proxy_port(a, b)}")
            self._ipt(a, "-A", _CHAIN, "-p", "tcp", "-d", self.ip(b), "--dport",
                      str(NODE_PORT), "-j", "REJECT", "--reject-with", "tcp-reset")

    def netem_delay(self, nodes: Iterable[int], delay_ms: int, jitter_ms: int,
                    reorder_pct: int) -> None:
        for i in nodes:
            _run([*self.exec_prefix(i), "tc", "qdisc", "replace", "dev", "eth0", "root",
                  "netem", "delay", f"{delay_ms}ms", f"{jitter_ms}ms", "reorder",
                  f"{reorder_pct}%"])

    def heal(self) -> None:
        """Every fault of this module removed, in every namespace."""
        for i in range(self.n):
            for table in ("filter", "nat", "mangle"):
                self._ipt(i, "-t", table, "-F", _CHAIN, check=False)
            if self.netem:
                _run([*self.exec_prefix(i), "tc", "qdisc", "del", "dev", "eth0", "root"],
                     check=False)
        self.blocked.clear()
