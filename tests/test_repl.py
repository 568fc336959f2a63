"""``nuraft-mesg repl`` driven through a pseudo-terminal, as a person would use it.

The REPL runs as ``python -m nuraft_mesg repl`` on the slave side of a pty (its controlling
terminal, so Ctrl-C and Ctrl-D are the terminal's own: the line discipline turns ``\\x03``
into SIGINT and ``\\x04`` at the start of a line into EOF).  The test types lines and reads
the screen until the expected text and the next prompt appear, each within a deadline: no
sleeps.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

DEADLINE = 30.0
"""Seconds any one expected text may take to appear (generous: CI machines can be slow)."""

PROMPT = r"(?<=\n)>>> "
"""The primary prompt, at the start of a line."""
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
_TAKE_CTTY_AND_EXEC = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                       "os.execv(sys.argv[1], sys.argv[1:])")
"""Run in the child (a new session, the pty's slave on 0-2): make the pty its controlling
terminal, so that the line discipline's Ctrl-C and Ctrl-D reach it, then become the REPL."""


class Terminal:
    """A child process on a pty, and the text it has written so far."""

    def __init__(self, argv: list[str]) -> None:
        env = dict(os.environ, TERM="dumb", PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONSTARTUP", None)
        # Not pty.fork(): forking a multi-threaded process (pytest's, with trio's worker
        # threads) may deadlock the child, and Python 3.12+ warns so.  subprocess forks and
        # execs in C; the child starts a session and takes the pty as its controlling
        # terminal (TIOCSCTTY) before exec'ing the REPL.
        fd, slave = os.openpty()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _TAKE_CTTY_AND_EXEC, *argv], stdin=slave, stdout=slave,
                stderr=slave, env=env, start_new_session=True, close_fds=True)
        finally:
            os.close(slave)
        self.fd = fd
        # A wide screen, so that readline never scrolls the echo of a long line sideways.
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        self.screen = ""
        self.pos = 0
        """Where the next expect() starts looking."""
        self.eof = False
        self.status: int | None = None

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if not ready:
            return
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: every slave fd is closed (the child is gone)
            data = b""
        if not data:
            self.eof = True
            return
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "")
        self.screen += _ANSI.sub("", text)

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears after the previous match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + DEADLINE
        while True:
            m = regex.search(self.screen, self.pos)
            if m is not None:
                self.pos = m.end()
                return m
            if self.eof or time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} did not appear; screen after the last match:\n"
                    + self.screen[self.pos:]
                )
            self._read(deadline - time.monotonic())

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def command(self, line: str, *expected: str, error: bool = False) -> str:
        """Type ``line`` + Enter; wait for each expected regex in turn, then the next prompt.
        Returns everything the command printed (its echo included), which must hold no
        traceback unless ``error``."""
        start = self.pos
        self.type(line + "\r")
        for pattern in expected:
            self.expect(pattern)
        self.expect(PROMPT)
        out = self.screen[start:self.pos]
        assert error or "Traceback" not in out, out
        return out

    def wait_exit(self) -> int:
        """Read until EOF, then reap the child; its exit status."""
        deadline = time.monotonic() + DEADLINE
        while not self.eof:
            if time.monotonic() > deadline:
                raise AssertionError("the REPL did not exit:\n" + self.screen[self.pos:])
            self._read(deadline - time.monotonic())
        self.status = self.proc.wait()
        return self.status

    def close(self) -> None:
        if self.status is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


@pytest.fixture
def repl() -> Iterator[Terminal]:
    term = Terminal([sys.executable, "-m", "nuraft_mesg", "repl", "--nodes", "3"])
    try:
        term.expect(r"3 node\(s\) on loopback")
        term.expect(PROMPT)
        yield term
    finally:
        term.close()


def _row(term: Terminal, gid: str) -> re.Match[str]:
    """The status() row of ``gid``: leader, term, commit, applied per node, members, lag."""
    return term.expect(
        rf"\n{gid[:8]}\s+(?P<leader>\S+)\s+(?P<term>\d+)\s+(?P<commit>\d+)\s+"
        r"(?P<applied>\S+)\s+(?P<members>\S+)\s+(?P<lag>\S+)\n"
    )


def test_groups_writes_partition_heal_kill_restart(repl: Terminal) -> None:
    term = repl
    term.command("help_repl()", r"await new_group\(", r"partition\(\*m\)", r"heal\(\)")

    term.command("g = await new_group()",
                 r"\ngroup ([0-9a-f-]{36}) on node1,node2,node3, leader node1\n")
    gid = re.findall(r"\ngroup ([0-9a-f-]{36}) on", term.screen)[-1]

    term.command('await m1.append_entries(g, [b"set x 1"])', r"\n\[b'OK'\]\n")
    term.command("await wait_applied(g)")
    term.type("status()\r")
    term.expect(r"nodes: node1=up  node2=up  node3=up\n")
    row = _row(term, gid)
    assert row["leader"] == "node1"
    assert row["term"] == "1"
    commit = int(row["commit"])
    assert row["applied"] == f"{commit}/{commit}/{commit}"
    assert sorted(row["members"].split(",")) == ["node1", "node2", "node3"]
    assert row["lag"] == "0/0/0"
    term.expect(PROMPT)

    # Cut node1 off: the others elect a leader among themselves and keep taking writes.
    term.command("partition(m1)", r"cut:   node1<->node2, node1<->node3\n")
    term.command("await wait_leader(g, among=[m2, m3])", r"\n<m[23]: node[23] [0-9a-f]{8} on ")
    term.command('await leader(g).append_entries(g, [b"set y 2"])', r"\n\[b'OK'\]\n")
    term.type("status()\r")
    term.expect(r"cut:   node1<->node2, node1<->node3\n")
    row = _row(term, gid)
    assert row["leader"] in ("node2", "node3")
    assert int(row["term"]) >= 2
    assert int(row["lag"].split("/")[0]) >= 1  # node1 cannot catch up while cut off
    term.expect(PROMPT)

    # Heal: node1 (still running all along) catches up and sees the write made without it.
    term.command("heal()", r"healed: every link restored\n")
    term.command("await wait_applied(g)")
    term.command("kv(g, m1)", r"\n\{'x': '1', 'y': '2'\}\n")
    term.command("await get(g, 'y', m3)", r"\n'2'\n")  # a follower read
    term.command("(await get(g, 'z', mode='stale')) is None", r"\nTrue\n")

    # Kill and restart a node: m3 follows the node's new Manager.
    term.command("await kill(m3)", r"\nnode3 killed\n")
    term.command("m3", r"\n<m3: node3 DOWN \(port \d+\)>\n")
    term.type("status()\r")
    term.expect(r"nodes: node1=up  node2=up  node3=DOWN\n")
    row = _row(term, gid)
    assert row["applied"].endswith("/down") and row["lag"].endswith("/down")
    term.expect(PROMPT)
    term.command("await restart(m3)", r"\nnode3 restarted on 127\.0\.0\.1:\d+\n")
    term.command("await wait_applied(g)")
    term.command("kv(g, m3)", r"\n\{'x': '1', 'y': '2'\}\n")
    term.command("m3", r"\n<m3: node3 [0-9a-f]{8} on 127\.0\.0\.1:\d+, 1 group\(s\)")

    # Forgetting `await` is answered, not silently ignored.
    term.command("kill(m2)", r"<coroutine kill>: not run; write `await kill\(\.\.\.\)`")
    term.command("m2", r"\n<m2: node2 [0-9a-f]{8} on ")  # still up

    term.type("\x04")  # Ctrl-D
    assert term.wait_exit() == 0
    assert "every node shut down cleanly" in term.screen
    assert "Traceback" not in term.screen


def test_ctrl_c_cancels_the_line_or_the_statement_and_ctrl_d_exits(repl: Terminal) -> None:
    term = repl
    # At the prompt: the half-typed line is discarded, as in Python's REPL.
    term.type("1/0")
    term.expect("1/0")  # echoed: the console is reading this line
    term.type("\x03")
    term.expect(r"\nKeyboardInterrupt\n" + PROMPT)
    term.command("print('alive', 6 * 7)", r"\nalive 42\n")

    # While a statement runs: it is cancelled, and the cluster keeps running.
    term.type("print('zz' + 'top'); await trio.sleep(1000)\r")
    term.expect(r"\nzztop\n")
    term.type("\x03")
    term.expect(r"\nKeyboardInterrupt\n" + PROMPT)
    term.command("g = await new_group()", r"\ngroup [0-9a-f-]{36} on node1,node2,node3")
    term.command('await m1.append_entries(g, [b"set after interrupt"])', r"\n\[b'OK'\]\n")

    # Errors are shown as tracebacks of the statement alone, and the session goes on.
    term.command("1/0", r"File \"<console>\", line 1", r"ZeroDivisionError", error=True)
    assert "_run_statement" not in term.screen

    term.type("\x04")
    assert term.wait_exit() == 0
    tail = term.screen[term.pos:]
    assert "every node shut down cleanly" in tail
    assert "Traceback" not in tail
