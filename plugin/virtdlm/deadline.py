"""How long virtdlmd may take to answer one request, and the clock each request runs against.

dlm.so and virtdlm.client wait VDL_IO_TIMEOUT_MS = REPLY_TIMEOUT_S (30 s) for a reply;
virtdlmd answers every request within REQUEST_TIMEOUT_S, which is shorter
(tests/unit/test_driver_drift.py holds that), so a client never gives up on a request the
daemon is still deciding. Each wait of a request (resolving disk identities, the decision
lock, the worker's queue and the backend call) is bounded by what is left of the request's
one deadline; on expiry the reply is TIMEOUT, naming what was awaited and for how long. A
backend call that outlives its deadline keeps nothing it gets (virtdlm.worker, .locker).
"""

from __future__ import annotations

import time

from .errors import Timeout

REQUEST_TIMEOUT_S = 25.0  # clients wait 30 s: 5 s are left for the reply's way back


class Deadline:
    """One request's clock: what the request is (for messages), its budget, what is left."""

    def __init__(self, what: str, budget_s: float) -> None:
        self.what = what  # e.g. "acquire for vm-1 (pid 4242)"
        self.budget_s = budget_s
        self._end = time.monotonic() + budget_s

    def left(self) -> float:
        """Seconds left before the request must be answered (0 once it has passed)."""
        return max(0.0, self._end - time.monotonic())

    def expired(self, fact: str) -> Timeout:
        """The error to answer with: the request, then what it waited for and how long."""
        return Timeout(f"{self.what}: {fact}")
