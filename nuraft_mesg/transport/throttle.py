"""Throttled error logs: the one mechanism for repeated failures (nuraft_mesg PR #78).

nuraft_mesg logs a repeated send error to one address only at powers of two within a 60 s
window: the 1st, 2nd, 4th, 8th, ... occurrence is logged, the others are counted.  A dead peer
that fails every heartbeat (10 per second) thus costs about ten log lines a minute instead of
six hundred, and the line says how many failures it stands for.

Used by Raft sends (:class:`~nuraft_mesg.transport.peers.PeerSender`), data-service sends
(:mod:`nuraft_mesg.data_service`) and the server's refusals (TLS handshakes, tokens) in
:mod:`nuraft_mesg.transport.grpc`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

import trio

__all__ = ["LOG_WINDOW", "LogThrottle"]

LOG_WINDOW: Final = 60.0
"""Seconds after which a key's count starts again at 1."""

_MAX_KEYS: Final = 4096
"""Keys remembered at most; beyond that the oldest windows are forgotten (a flood of distinct
keys - e.g. many remote addresses - must not grow memory without bound)."""


class LogThrottle:
    """Power-of-two throttling per key within a fixed window.

    ``hit(key)`` counts one event and returns its number in the current window if it should
    be logged (1, 2, 4, 8, ...), else 0.  The window of a key starts at its first event and
    lasts ``window`` seconds (trio's clock, so it follows a test's MockClock).
    """

    def __init__(self, window: float = LOG_WINDOW, *, max_keys: int = _MAX_KEYS) -> None:
        self.window = window
        self.max_keys = max_keys
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def hit(self, key: Hashable) -> int:
        """Count one event of ``key``; its number in the window if it should be logged, else 0."""
        now = trio.current_time()
        start, count = self._seen.pop(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        count += 1
        if len(self._seen) >= self.max_keys:
            del self._seen[next(iter(self._seen))]  # the least recently hit key
        self._seen[key] = (start, count)
        return count if count & (count - 1) == 0 else 0
