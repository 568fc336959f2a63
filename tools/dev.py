#!/usr/bin/env python3
"""Single entry point for developers and CI (standard library only).

    python3 tools/dev.py test [pytest args...]   lint, type-check, then run the test suite
    python3 tools/dev.py lint                    ruff + mypy only
    python3 tools/dev.py demo [args...]          run ``python -m nuraft_mesg demo [args...]``
    python3 tools/dev.py proto                   regenerate nuraft_mesg/transport/_proto/
    python3 tools/dev.py bench [--quick] [...]   benchmarks (benchmarks/run.py, docs/benchmarks.md)

Every command first makes sure ``.venv`` (in the repository root) exists and holds the project
installed editable with its ``dev`` extra.  The install is skipped when ``.venv/.nuraft-stamp``
holds the sha256 of ``pyproject.toml``, so reruns start at once.  The environment (for example
``HYPOTHESIS_PROFILE``) is passed through to the tools untouched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".nuraft-stamp"
PYPROJECT = ROOT / "pyproject.toml"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")

USAGE = __doc__ or ""


def step(title: str) -> None:
    print(f"==> {title}", flush=True)


def tool_env() -> dict[str, str]:
    """This process's environment with the virtualenv activated (nothing else changed)."""
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONHOME", None)
    return env


def run(title: str, cmd: Sequence[str | os.PathLike[str]]) -> int:
    step(title)
    try:
        return subprocess.run([os.fspath(c) for c in cmd], cwd=ROOT, env=tool_env()).returncode
    except KeyboardInterrupt:
        return 130


def pyproject_hash() -> str:
    return hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()


def bootstrap() -> int:
    """Create ``.venv`` and install the project into it if needed; returns an exit code."""
    if sys.version_info < (3, 11):  # noqa: UP036 (this script runs on any python3)
        print(f"error: Python >= 3.11 is needed, this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    if not PYTHON.exists():
        step(f"creating virtualenv {VENV.relative_to(ROOT)} with {sys.executable}")
        if VENV.exists():
            shutil.rmtree(VENV)  # a broken leftover without an interpreter
        rc = subprocess.run([sys.executable, "-m", "venv", str(VENV)], cwd=ROOT).returncode
        if rc != 0:
            print(
                "error: could not create the virtualenv (on Debian/Ubuntu: apt-get install "
                "python3-venv)",
                file=sys.stderr,
            )
            return rc
    digest = pyproject_hash()
    if STAMP.is_file() and STAMP.read_text(encoding="utf-8").strip() == digest:
        return 0
    STAMP.unlink(missing_ok=True)
    rc = run(
        "pip install -e '.[dev]'",
        [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-e", ".[dev]"],
    )
    if rc != 0:
        return rc
    STAMP.write_text(digest + "\n", encoding="utf-8")
    return 0


def lint() -> int:
    rc = run("ruff check .", [PYTHON, "-m", "ruff", "check", "."])
    if rc != 0:
        return rc
    return run(
        "mypy nuraft_mesg tests tools", [PYTHON, "-m", "mypy", "nuraft_mesg", "tests", "tools"]
    )


def cmd_lint(args: list[str]) -> int:
    if args:
        print("error: lint takes no arguments", file=sys.stderr)
        return 2
    return lint()


def cmd_test(args: list[str]) -> int:
    rc = lint()
    if rc != 0:
        return rc
    return run(" ".join(["pytest", *args]), [PYTHON, "-m", "pytest", *args])


def cmd_demo(args: list[str]) -> int:
    cmd = [os.fspath(PYTHON), "-m", "nuraft_mesg", "demo", *args]
    step(" ".join(["python -m nuraft_mesg demo", *args]))
    sys.stdout.flush()
    if os.name == "posix":
        os.chdir(ROOT)
        os.execve(cmd[0], cmd, tool_env())  # signals (Ctrl-C) go straight to the demo
    return run("demo", cmd)


def cmd_proto(args: list[str]) -> int:
    if args:
        print("error: proto takes no arguments", file=sys.stderr)
        return 2
    out_dir = ROOT / "nuraft_mesg" / "transport" / "_proto"
    return run(
        f"regenerating {out_dir.relative_to(ROOT)} from proto/*.proto",
        [PYTHON, ROOT / "tools" / "gen_proto.py", out_dir],
    )


def cmd_bench(args: list[str]) -> int:
    """Install the ``bench`` extra (once per pyproject.toml), then run benchmarks/run.py."""
    stamp = VENV / ".nuraft-bench-stamp"
    digest = pyproject_hash()
    if not (stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest):
        rc = run(
            "pip install -e '.[dev,bench]'",
            [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-e", ".[dev,bench]"],
        )
        if rc != 0:
            return rc
        stamp.write_text(digest + "\n", encoding="utf-8")
    return run(" ".join(["benchmarks/run.py", *args]),
               [PYTHON, ROOT / "benchmarks" / "run.py", *args])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE.strip())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    commands = {
        "test": cmd_test,
        "demo": cmd_demo,
        "proto": cmd_proto,
        "lint": cmd_lint,
        "bench": cmd_bench,
    }
    handler = commands.get(command)
    if handler is None:
        print(f"error: unknown command {command!r}\n\n{USAGE.strip()}", file=sys.stderr)
        return 2
    rc = bootstrap()
    if rc != 0:
        return rc
    return handler(rest)


if __name__ == "__main__":
    sys.exit(main())
