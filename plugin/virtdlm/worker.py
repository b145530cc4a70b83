"""The daemon's one worker thread: every backend call runs there, under a deadline.

libdlm is used single-threaded, and its calls block; running them on one thread off the
event loop keeps both true. A backend that never blocks (the in-process model) is called
inline instead, which saves two thread switches per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import Timeout

T = TypeVar("T")

BACKEND_CALL_TIMEOUT_S = 60.0


class Worker:
    def __init__(self, lockspace: str) -> None:
        self.lockspace = lockspace
        self.inline = False  # set once the backend is known never to block
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlm-worker")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the worker thread (or inline); Timeout past BACKEND_CALL_TIMEOUT_S."""
        if self.inline:
            return fn(*args)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        try:
            async with asyncio.timeout(BACKEND_CALL_TIMEOUT_S):
                return await future
        except TimeoutError as err:
            raise Timeout(
                f"{self.lockspace}: backend call {getattr(fn, '__name__', fn)} did "
                f"not finish in {BACKEND_CALL_TIMEOUT_S:.0f} s; check 'dlm_tool status'"
            ) from err

    def shutdown(self) -> None:
        """Wait for the call in progress, then end the thread."""
        self._executor.shutdown(wait=True)
