"""Shared pytest configuration.

Hypothesis profiles (pick one with the environment variable ``HYPOTHESIS_PROFILE``):

* ``ci`` (default): 30 examples per property, fast enough for every run;
* ``thorough``: 1200 examples per property (40x ``ci``), for a deeper search;
* ``dev``: 10 examples, for quick local iteration.

Examples are random (not derandomized); on failure Hypothesis prints the seed and the
shrunk example needed to reproduce it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_CI_EXAMPLES = 30

settings.register_profile(
    "ci",
    max_examples=_CI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=_CI_EXAMPLES * 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
