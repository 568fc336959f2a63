"""The runnable examples of docs/ stay correct: each is run as a program."""

from __future__ import annotations

import re

import pytest

from . import PYTHON, ROOT, run

DOCS = ROOT / "docs"


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
