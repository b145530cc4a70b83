"""The one polling helper: wait for a condition with a deadline, never sleep and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class LabError(Exception):
    """Root of the lab kit's errors."""


class WaitTimeout(LabError):
    pass


def wait_for(
    predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.05, what: str = "condition"
) -> T:
    """Call `predicate` until it returns something truthy; raise WaitTimeout at the deadline.

    The error names what was awaited, for how long, and the last value or error seen.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as err:  # the last error is reported if the deadline passes
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"waited {timeout_s:.1f} s for {what}; last seen: {last!r}")
        time.sleep(interval_s)
