#!/usr/bin/env python3
"""Single entry point for developers and CI (standard library only).

    python3 tools/dev.py test [pytest args...]   lint, type-check, then run the test suite
    python3 tools/dev.py lint                    ruff + mypy only
    python3 tools/dev.py demo [args...]          run ``python -m nuraft_mesg demo [args...]``
    python3 tools/dev.py proto                   regenerate nuraft_mesg/transport/_proto/
    python3 tools/dev.py bench [--quick] [...]   benchmarks (benchmarks/run.py, docs/benchmarks.md)
    python3 tools/dev.py docs [mkdocs args...]   build the docs site (mkdocs --strict) into site/
    python3 tools/dev.py matrix [--full]         the wheel smoke on Python 3.11, 3.12 and 3.13;
                                                 --full: also the whole suite on each version
    python3 tools/dev.py lock                    regenerate constraints.txt (see below)
    python3 tools/dev.py chaos [--nodes 3|5] [--minutes M] [--seed S] [--groups N] [...]
                                                 the fault-injection rig on real processes in
                                                 network namespaces (root; docs/chaos.md)

Every command first makes sure ``.venv`` (in the repository root) exists and holds the project
installed editable with its ``dev`` and ``docs`` extras, at the versions of ``constraints.txt``
(``pip install -c``), so that a fresh machine gets the toolchain that passed.  The install is
skipped when ``.venv/.nuraft-stamp`` holds the sha256 of ``pyproject.toml`` and
``constraints.txt``, so reruns start at once.  The environment (for example
``HYPOTHESIS_PROFILE``) is passed through to the tools untouched.

``lock`` installs the extras into a new throw-away virtualenv without constraints (so the newest
versions pyproject.toml allows) and writes what it got to ``constraints.txt``; run
``matrix --full`` afterwards and commit the file only when it passes.  ``matrix --full`` keeps a
virtualenv per extra interpreter (``.venv-3.12``, ``.venv-3.13``); an interpreter is found as
``python3.X`` on PATH or in pyenv's versions, and a missing one is reported and skipped.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"
EXTRAS = "dev,docs"
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
"""The interpreters the project supports (pyproject's classifiers say the same)."""


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / (
        "python.exe" if os.name == "nt" else "python")


BIN = venv_python(VENV).parent
PYTHON = venv_python(VENV)

USAGE = __doc__ or ""


def step(title: str) -> None:
    print(f"==> {title}", flush=True)


def tool_env(venv: Path = VENV) -> dict[str, str]:
    """This process's environment with ``venv`` activated (nothing else changed)."""
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = str(venv_python(venv).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONHOME", None)
    return env


def run(title: str, cmd: Sequence[str | os.PathLike[str]], venv: Path = VENV) -> int:
    step(title)
    try:
        return subprocess.run([os.fspath(c) for c in cmd], cwd=ROOT,
                              env=tool_env(venv)).returncode
    except KeyboardInterrupt:
        return 130


def pyproject_hash() -> str:
    digest = hashlib.sha256(PYPROJECT.read_bytes())
    if CONSTRAINTS.is_file():
        digest.update(CONSTRAINTS.read_bytes())
    return digest.hexdigest()


def find_interpreter(version: str) -> str | None:
    """``python<version>`` from PATH (if it runs: a pyenv shim of a version that is not
    selected does not) or from pyenv's versions; None when there is none."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin",
                                                f"python{version}")), reverse=True)
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def pip_install(venv: Path, *requirements: str) -> list[str | os.PathLike[str]]:
    """``pip install`` into ``venv``, held to constraints.txt when there is one."""
    cmd: list[str | os.PathLike[str]] = [venv_python(venv), "-m", "pip", "install",
                                         "--disable-pip-version-check"]
    if CONSTRAINTS.is_file():
        cmd += ["-c", CONSTRAINTS]
    return [*cmd, *requirements]


def create_venv(venv: Path, interpreter: str) -> int:
    step(f"creating virtualenv {venv.name} with {interpreter}")
    if venv.exists():
        shutil.rmtree(venv)  # a broken leftover without an interpreter
    rc = subprocess.run([interpreter, "-m", "venv", str(venv)], cwd=ROOT).returncode
    if rc != 0:
        print("error: could not create the virtualenv (on Debian/Ubuntu: apt-get install "
              "python3-venv)", file=sys.stderr)
    return rc


def ensure_venv(venv: Path, interpreter: str, extras: str = EXTRAS,
                stamp_name: str = ".nuraft-stamp") -> int:
    """Create ``venv`` with ``interpreter`` and install the project editable with ``extras``
    into it, unless its stamp says that was done for this pyproject.toml and constraints.txt."""
    if not venv_python(venv).exists():
        rc = create_venv(venv, interpreter)
        if rc != 0:
            return rc
    stamp = venv / stamp_name
    digest = pyproject_hash()
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        return 0
    stamp.unlink(missing_ok=True)
    rc = run(f"pip install -e '.[{extras}]' into {venv.name}",
             pip_install(venv, "-e", f".[{extras}]"), venv)
    if rc != 0:
        return rc
    stamp.write_text(digest + "\n", encoding="utf-8")
    return 0


def bootstrap() -> int:
    """Create ``.venv`` and install the project into it if needed; returns an exit code."""
    if sys.version_info < (3, 11):  # noqa: UP036 (this script runs on any python3)
        print(f"error: Python >= 3.11 is needed, this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    return ensure_venv(VENV, sys.executable)


def lint() -> int:
    rc = run("ruff check .", [PYTHON, "-m", "ruff", "check", "."])
    if rc != 0:
        return rc
    return run(
        "mypy nuraft_mesg tests tools benchmarks",
        [PYTHON, "-m", "mypy", "nuraft_mesg", "tests", "tools", "benchmarks"],
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
    rc = ensure_venv(VENV, sys.executable, f"{EXTRAS},bench", ".nuraft-bench-stamp")
    if rc != 0:
        return rc
    return run(" ".join(["benchmarks/run.py", *args]),
               [PYTHON, ROOT / "benchmarks" / "run.py", *args])


def cmd_chaos(args: list[str]) -> int:
    """One run of the chaos rig (nuraft_mesg/testing/chaos), niced: it is CPU-hungry."""
    return run(" ".join(["chaos", *args]),
               ["nice", PYTHON, "-m", "nuraft_mesg.testing.chaos", *args])


def cmd_docs(args: list[str]) -> int:
    """The docs site, strictly: a broken link or an unresolved API reference fails."""
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")  # material's banner is not a warning
    return run(" ".join(["mkdocs build --strict", *args]),
               [PYTHON, "-m", "mkdocs", "build", "--strict", "--site-dir", ROOT / "site", *args])


def cmd_matrix(args: list[str]) -> int:
    """The wheel smoke on every supported Python (tests/packaging/test_wheel.py is
    parametrised over them); with ``--full`` the whole suite too, one virtualenv per version."""
    if args not in ([], ["--full"]):
        print("error: matrix takes only --full", file=sys.stderr)
        return 2
    rc = run("wheel smoke on " + ", ".join(PYTHON_VERSIONS),
             [PYTHON, "-m", "pytest", "-q", "-rs", "tests/packaging/test_wheel.py"])
    if rc != 0 or not args:
        return rc
    results: dict[str, str] = {}
    for version in PYTHON_VERSIONS:
        interpreter = find_interpreter(version)
        if interpreter is None:
            results[version] = "skipped: no interpreter"
            continue
        current = f"{sys.version_info[0]}.{sys.version_info[1]}"
        venv = VENV if version == current else ROOT / f".venv-{version}"
        rc = ensure_venv(venv, interpreter)
        took = ""
        if rc == 0:
            start = time.monotonic()
            rc = run(f"pytest on Python {version}", [venv_python(venv), "-m", "pytest", "-q"],
                     venv)
            took = f" in {time.monotonic() - start:.0f} s"
        results[version] = ("passed" if rc == 0 else f"FAILED (exit {rc})") + took
    step("matrix: " + "; ".join(f"{v} {r}" for v, r in results.items()))
    return 0 if all(r.startswith(("passed", "skipped")) for r in results.values()) else 1


def cmd_lock(args: list[str]) -> int:
    """Regenerate constraints.txt from a fresh, unconstrained install of the extras."""
    if args:
        print("error: lock takes no arguments", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nuraft-lock-") as tmp:
        venv = Path(tmp) / "venv"
        rc = create_venv(venv, sys.executable)
        if rc == 0:
            rc = run(f"pip install '.[{EXTRAS}]' (unconstrained)",
                     [venv_python(venv), "-m", "pip", "install", "--disable-pip-version-check",
                      f".[{EXTRAS}]"], venv)
        if rc != 0:
            return rc
        frozen = subprocess.run(
            [venv_python(venv), "-m", "pip", "freeze", "--all", "--exclude-editable",
             "--exclude", "pip", "--exclude", "nuraft_mesg", "--exclude", "nuraft-mesg"],
            capture_output=True, text=True, check=True).stdout
    header = (
        "# The test toolchain that passed: `pip install -c constraints.txt -e '.[dev,docs]'`\n"
        "# (tools/dev.py does it).  Regenerate with `python3 tools/dev.py lock` (newest versions\n"
        "# pyproject.toml allows), then `python3 tools/dev.py matrix --full`, then commit.\n"
        f"# Frozen on Python {sys.version.split()[0]}.\n"
    )
    CONSTRAINTS.write_text(header + frozen, encoding="utf-8")
    step(f"wrote {CONSTRAINTS.relative_to(ROOT)} ({len(frozen.splitlines())} pins)")
    return 0


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
        "docs": cmd_docs,
        "matrix": cmd_matrix,
        "lock": cmd_lock,
        "chaos": cmd_chaos,
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
