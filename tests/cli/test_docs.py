"""The docs stay correct: runnable examples run, the site builds strictly, the API reference
covers the public API."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nuraft_mesg
import nuraft_mesg.testing

from . import PYTHON, ROOT, run

DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"


def _programs(name: str) -> list[str]:
    """The ```python blocks of a doc that are whole programs (they call ``trio.run``)."""
    text = (DOCS / name).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if "trio.run(" in b]


@pytest.mark.parametrize("doc", ["quickstart.md", "data-service.md"])
async def test_doc_programs_run(doc: str) -> None:
    programs = _programs(doc)
    assert programs, f"no runnable program in {doc}"
    for program in programs:
        done = await run(PYTHON, "-c", program)
        out = done.stdout.decode()
        assert done.returncode == 0, out + done.stderr.decode()
        for expected in re.findall(r"# prints: (.*)", program):
            assert expected.strip() in out, (expected, out)


def _documented() -> list[str]:
    """Every ``::: target`` of the API reference pages, in page order."""
    return [m.group(1) for page in sorted(REFERENCE.glob("*.md"))
            for m in re.finditer(r"^::: *(\S+)", page.read_text(encoding="utf-8"), re.M)]


def test_reference_covers_exactly_the_public_api() -> None:
    """Each public name (``nuraft_mesg.__all__``, ``nuraft_mesg.testing.__all__``) is in the
    reference once, under its public import path; nothing else is (so moving code between
    internal modules cannot break or silently shrink the reference)."""
    public = {f"nuraft_mesg.{n}" for n in nuraft_mesg.__all__}
    public |= {f"nuraft_mesg.testing.{n}" for n in nuraft_mesg.testing.__all__}
    documented = _documented()
    assert len(documented) == len(set(documented)), "a name is documented twice"
    assert sorted(public - set(documented)) == [], "public but not in docs/reference"
    assert sorted(set(documented) - public) == [], "in docs/reference but not public"


@pytest.mark.skipif(bool(os.environ.get("NURAFT_OFFLINE")),
                    reason="NURAFT_OFFLINE is set: the docs extra (mkdocs) may not be installed")
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (what ``tools/dev.py docs`` runs): a broken link or anchor, a
    page missing from the nav, a docstring griffe cannot parse or an API reference that does
    not resolve is a warning, and a warning fails the build."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         ROOT / "mkdocs.yml", "--site-dir", site],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "WARNING" not in log, log
    manager = (site / "reference" / "manager" / "index.html").read_text(encoding="utf-8")
    assert 'id="nuraft_mesg.Manager"' in manager
    assert "create_group" in manager  # members rendered from the docstrings
    assert (site / "deploy" / "index.html").is_file()
