"""Fixtures of the security tests, and the report of how many hostile inputs were tried.

The fuzz budget follows the Hypothesis profile (``HYPOTHESIS_PROFILE``, tests/conftest.py):
``ci`` (default) keeps every hostile-input test to a few seconds, ``thorough`` tries 40 times
as many inputs, ``dev`` a third.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import INPUTS, Certs, make_certs

FUZZ_SCALE = {"ci": 1.0, "thorough": 40.0, "dev": 0.3}.get(
    os.environ.get("HYPOTHESIS_PROFILE", "ci"), 1.0
)


def budget(ci_count: int) -> int:
    """How many inputs a fuzz loop sized ``ci_count`` for the ci profile tries now."""
    return max(1, int(ci_count * FUZZ_SCALE))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory: Path = tmp_path_factory.mktemp("certs")
    return make_certs(directory)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if INPUTS:
        total = sum(INPUTS.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(INPUTS.items()))
        terminalreporter.write_line(f"hostile inputs tried: {total} ({detail})")
