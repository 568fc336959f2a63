"""Helpers for testing code built on nuraft_mesg.

:func:`check_log_store` and :func:`check_state_manager` are conformance suites for your own
storage implementations: call them from a trio test with a factory of fresh objects (and,
optionally, a ``reopen`` function that simulates a restart).  They raise
:class:`AssertionError` on the first violation and need no test framework.
"""

from nuraft_mesg.testing.conformance import check_log_store, check_state_manager

__all__ = ["check_log_store", "check_state_manager"]
