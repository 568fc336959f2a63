"""Loaded by the chaos rig's node processes only (their PYTHONPATH starts with this folder):
installs the test-mode agent of :mod:`nuraft_mesg.testing.chaos.agent`."""

import os

if os.environ.get("NURAFT_CHAOS_CONTROL"):
    from nuraft_mesg.testing.chaos import agent

    agent.install(os.environ["NURAFT_CHAOS_CONTROL"])
