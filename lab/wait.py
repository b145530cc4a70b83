"""Waiting with deadlines: the one polling helper, and one bound for a blocking call.

Never sleep and hope: ``wait_for`` polls a predicate until a deadline; ``bounded_call`` runs
a call that may block (an SSH read from a dead node, a hung library call) on a helper thread
and gives up on it at a deadline.
"""

from __future__ import annotations

import threading
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


def bounded_call(
    fn: Callable[[], T],
    timeout_s: float,
    what: str,
    on_expiry: Callable[[], object] | None = None,
) -> T:
    """`fn()`'s value or exception, or WaitTimeout once `timeout_s` has passed.

    `fn` runs on a daemon thread, so a call that never returns cannot hold up the program's
    exit. At the deadline `on_expiry` runs first: it should make the call return (close
    the connection it reads from), so the thread ends soon after.
    """
    value: list[T] = []
    error: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            value.append(fn())
        except BaseException as err:  # re-raised in the caller's thread below
            error.append(err)
        finally:
            done.set()

    threading.Thread(target=target, name=f"bounded: {what}"[:60], daemon=True).start()
    if not done.wait(timeout_s):
        if on_expiry is not None:
            on_expiry()
        raise WaitTimeout(f"{what} did not finish in {timeout_s:.0f} s")
    if error:
        raise error[0]
    return value[0]
