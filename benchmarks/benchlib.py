"""Helpers shared by the benchmark scripts (standard library only).

* :class:`Histogram`: latencies in log-spaced buckets (1 % wide), mergeable across processes and
  small enough to send as one JSON line; percentiles are accurate to about 1 %.
* :func:`proc_cpu_seconds`: utime + stime of a process from ``/proc/<pid>/stat``.
* :class:`NodeProcess`: a benchmark node as a child process with a JSON-lines control channel
  (commands on its stdin, one answer per command on its stdout; its stderr goes to a log file).
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "KEYS",
    "Histogram",
    "NodeError",
    "NodeProcess",
    "Window",
    "exact_percentile",
    "machine_busy_seconds",
    "free_port",
    "proc_cpu_seconds",
    "proc_rss_mb",
]

KEYS = 16
"""Distinct keys of the benchmark state machines (both libraries): the state stays tiny, so
PySyncObj's default log compaction (a full pickle + gzip every 5,000 entries) stays cheap."""

_BASE = 1.01
_LOG_BASE = math.log(_BASE)


class Histogram:
    """Latencies in microseconds, in buckets ``[1.01**k, 1.01**(k+1))``."""

    __slots__ = ("buckets", "count", "total_us")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_us = 0.0

    def add(self, seconds: float) -> None:
        us = max(seconds * 1e6, 1.0)
        k = int(math.log(us) / _LOG_BASE)
        self.buckets[k] = self.buckets.get(k, 0) + 1
        self.count += 1
        self.total_us += us

    def merge(self, other: Histogram) -> None:
        for k, n in other.buckets.items():
            self.buckets[k] = self.buckets.get(k, 0) + n
        self.count += other.count
        self.total_us += other.total_us

    def percentile_ms(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) in milliseconds (a bucket's geometric middle)."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen >= rank:
                return math.pow(_BASE, k + 0.5) / 1000
        return math.pow(_BASE, max(self.buckets) + 0.5) / 1000

    def mean_ms(self) -> float | None:
        return self.total_us / self.count / 1000 if self.count else None

    def to_json(self) -> dict[str, Any]:
        return {"buckets": [[k, n] for k, n in sorted(self.buckets.items())],
                "count": self.count, "total_us": self.total_us}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Histogram:
        h = cls()
        h.buckets = {int(k): int(n) for k, n in obj["buckets"]}
        h.count = int(obj["count"])
        h.total_us = float(obj["total_us"])
        return h

    @classmethod
    def merged(cls, hists: Iterable[Histogram]) -> Histogram:
        out = cls()
        for h in hists:
            out.merge(h)
        return out


def exact_percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of a small sample."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- machine load (the machine may be shared: others' CPU is recorded with every figure) ----
def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine from /proc/stat (all cores)."""
    with open("/proc/stat", encoding="ascii") as f:
        parts = f.readline().split()[1:]
    values = [int(v) for v in parts[:8]]
    idle = values[3] + values[4]
    total = sum(values)
    tck = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tck, total / tck


class Window:
    """CPU use of some processes and of the whole machine over a time window."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.cpu0 = [proc_cpu_seconds(p) for p in pids]
        self.busy0, _ = machine_busy_seconds()
        self.result: dict[str, Any] = {}

    def close(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        cpu1 = [proc_cpu_seconds(p) for p in self.pids]
        busy1, _ = machine_busy_seconds()
        ours = [(b - a) for a, b in zip(self.cpu0, cpu1, strict=True)]
        machine = busy1 - self.busy0
        self.result = {
            "wall_s": round(wall, 3),
            "cpu_pct": [round(x / wall * 100, 2) for x in ours],
            "cpu_s": [round(x, 4) for x in ours],
            "machine_busy_cores": round(machine / wall, 2),
            "others_busy_cores": round(max(0.0, machine - sum(ours)) / wall, 2),
        }
        return self.result



def cpu_us_per_commit(window: dict[str, Any], commits_per_s: float, leader: int
                      ) -> list[float | None]:
    """CPU microseconds per committed entry of each process in ``window`` (from /proc
    utime + stime over the measured window), the leader's first, then the followers'.

    The figure that survives a noisy machine: commits/s swings with the CPU the other
    tenants leave us, the CPU one commit costs hardly does."""
    commits = commits_per_s * window["wall_s"]
    per = [round(c * 1e6 / commits, 1) if commits > 0 else None for c in window["cpu_s"]]
    return [per[leader]] + [c for i, c in enumerate(per) if i != leader]


class NodeError(RuntimeError):
    pass


GC_ENV = "BENCH_GC"
DEFAULT_GC = "50000,50,1000"
"""Garbage-collector thresholds of every node process (nuraft_mesg's and PySyncObj's alike),
passed down by ``run.py --gc``.  Python's defaults (700, 10, 10) run a full collection over
every live object every 70,000 allocations or so; with 10,000 groups in a process that is a
pause long enough to miss election timeouts (creating 10,000 groups took 77 s with them, with
about 1,000 needless leader changes, against 50 s and none with these)."""


def apply_gc_setting() -> tuple[int, ...]:
    """Apply ``BENCH_GC`` ("g0,g1,g2", or "default") to this process; returns the thresholds
    in force."""
    import gc

    value = os.environ.get(GC_ENV, "default")
    if value != "default":
        gc.set_threshold(*(int(x) for x in value.split(",")))
    return tuple(gc.get_threshold())


class NodeProcess:
    """A child process speaking JSON lines: it prints ``{"event": "ready", ...}`` when it is
    up, then answers each command line written to its stdin with exactly one line."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        self.start_nowait()
        return self.wait_ready(timeout)

    def start_nowait(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (the child keeps it)
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                text=True, bufsize=1, env=self.env,
            )
        finally:
            log.close()
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, name=f"{self.name}-stdout", daemon=True).start()

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        self.ready = self._read_line(timeout)
        if self.ready.get("event") != "ready":
            raise NodeError(f"{self.name}: expected a ready line, got {self.ready}")
        return self.ready

    def _pump(self) -> None:
        """Reader thread: every stdout line into the queue, then None at EOF."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_line(self, timeout: float) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NodeError(f"{self.name}: no answer within {timeout:.0f} s "
                                f"(log: {self.log_path})")
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)  # stays at EOF
                raise NodeError(f"{self.name} exited (code {proc.wait()}); see {self.log_path}")
            line = line.strip()
            if line.startswith("{"):
                obj: dict[str, Any] = json.loads(line)
                return obj

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 60.0) -> dict[str, Any]:
        reply = self._read_line(timeout)
        if "error" in reply:
            raise NodeError(f"{self.name}: {reply['error']}")
        return reply

    def request(self, cmd: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        self.send(cmd)
        return self.recv(timeout)

    def kill9(self) -> None:
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the node to quit (closing its stdin), then SIGTERM, then SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def python() -> str:
    return sys.executable
