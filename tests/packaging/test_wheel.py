"""The wheel a user installs: built from the sdist (``python -m build``), installed (not
editable) into a fresh virtualenv on every supported Python, then run from outside the source
tree: every module imports, py.typed / the .pyi stubs / the generated proto modules are there,
three nodes commit a write and answer a status call (wheel_smoke.py), and ``nuraft-mesg --help``
works.  A file missing from the package data fails here, not on a user's machine.

Installing the dependencies needs the package index or a warm pip cache: ``-m "not wheel"``
(or ``NURAFT_OFFLINE=1``) skips these tests.  A Python that is not installed is skipped with a
reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import nuraft_mesg
from tools.dev import CONSTRAINTS, PYTHON_VERSIONS, ROOT, find_interpreter, venv_python

pytestmark = [
    pytest.mark.wheel,
    pytest.mark.skipif(bool(os.environ.get("NURAFT_OFFLINE")), reason="NURAFT_OFFLINE is set"),
]

SMOKE = Path(__file__).with_name("wheel_smoke.py")


def _run(cmd: list[str | os.PathLike[str]], cwd: Path, timeout: float = 120,
         ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    done = subprocess.run([os.fspath(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist, then the wheel built from the sdist (so the wheel also
    proves the sdist is complete).  No build isolation: the backend is the dev extra's."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=ROOT,
         timeout=180)
    return out


def test_sdist_and_wheel_hold_the_package_data(dist: Path) -> None:
    version = nuraft_mesg.__version__
    (wheel,) = dist.glob(f"nuraft_mesg-{version}-py3-none-any.whl")
    (sdist,) = dist.glob(f"nuraft_mesg-{version}.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "nuraft_mesg"
    expected = {p.relative_to(ROOT).as_posix() for p in package.rglob("*")
                if p.suffix in {".py", ".pyi", ".typed"} and "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)
    assert f"nuraft_mesg-{version}.dist-info/entry_points.txt" in names
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "CHANGELOG.md", "MANIFEST.in"} <= members
    protos = {p.relative_to(ROOT).as_posix() for p in (ROOT / "proto").glob("*.proto")}
    assert protos and protos <= members, sorted(protos - members)


@pytest.mark.parametrize("version", PYTHON_VERSIONS)
def test_wheel_installs_and_runs(version: str, dist: Path, tmp_path: Path) -> None:
    interpreter = find_interpreter(version)
    if interpreter is None:
        pytest.skip(f"no Python {version} on this machine (PATH or pyenv)")
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    _run([interpreter, "-m", "venv", venv], cwd=tmp_path)
    python = venv_python(venv)
    install: list[str | os.PathLike[str]] = [python, "-m", "pip", "install", "-q",
                                             "--disable-pip-version-check"]
    if CONSTRAINTS.is_file():
        install += ["-c", CONSTRAINTS]
    _run([*install, wheel], cwd=tmp_path)
    # From tmp_path, never the source tree: only the installed wheel can be imported.
    smoke = _run([python, SMOKE], cwd=tmp_path, timeout=60)
    assert f"on Python {version}." in smoke.stdout, smoke.stdout
    print(smoke.stdout.strip())
    cli = _run([python.parent / "nuraft-mesg", "--help"], cwd=tmp_path)
    assert "server" in cli.stdout and "demo" in cli.stdout, cli.stdout
    server = _run([python.parent / "nuraft-mesg", "server", "--help"], cwd=tmp_path)
    assert "--data-dir" in server.stdout, server.stdout
