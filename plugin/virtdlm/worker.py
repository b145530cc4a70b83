"""The daemon's one worker thread: every backend call runs there, in order, under a deadline.

libdlm is used single-threaded, and its calls block; running them on one thread off the
event loop keeps both true. A backend that never blocks is called inline instead, which
saves two thread switches per request (the model blocks too: on a stopped lockspace).

A call whose caller stops waiting (its deadline passed, the request was answered TIMEOUT)
is never cancelled: a blocked DLM call cannot be taken back, and a call queued behind it
may be a release, which must not be lost. Every call runs to its end, in the order it was
submitted. A *revocable* call (an acquire) learns through its ``Call`` whether its outcome
still counts: the worker thread commits the outcome, the event loop abandons the call at
the deadline, and whichever comes first wins. An abandoned acquire keeps nothing
(virtdlm.locker): a call that had not begun is dropped, one that ends late gives back what
it got at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from .deadline import Deadline
from .errors import VirtDlmError

log = logging.getLogger(__name__)
T = TypeVar("T")

LIFECYCLE_CALL_TIMEOUT_S = 60.0  # start (open, adopt, purge) and stop (close): no client waits

_PENDING, _COMMITTED, _ABANDONED = "pending", "committed", "abandoned"


class Call:
    """One backend call racing its caller's deadline: the first side to decide wins."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started: float | None = None  # time.monotonic() when the worker began it
        self._mutex = threading.Lock()
        self._state = _PENDING

    @property
    def abandoned(self) -> bool:
        """The caller stopped waiting: the call's outcome no longer counts."""
        return self._state == _ABANDONED

    def commit(self) -> bool:
        """Worker thread: the outcome counts, unless the caller has already given up."""
        with self._mutex:
            if self._state == _ABANDONED:
                return False
            self._state = _COMMITTED
            return True

    def abandon(self) -> bool:
        """Event loop: give up on the call, unless its outcome has already been committed."""
        with self._mutex:
            if self._state == _COMMITTED:
                return False
            self._state = _ABANDONED
            return True


class Worker:
    def __init__(self, lockspace: str) -> None:
        self.lockspace = lockspace
        self.inline = False  # set once the backend is known never to block
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlm-worker")
        self._calls: list[Call] = []  # submitted and not finished, in order (event loop only)

    async def run(self, fn: Callable[..., T], *args: Any, deadline: Deadline | None = None) -> T:
        """fn(*args) on the worker thread. Timeout once the deadline passes (by default
        LIFECYCLE_CALL_TIMEOUT_S); the call still runs to its end (a release is never lost)."""
        after = "it still runs once the backend answers"
        return await self._run(_name(fn), lambda call: fn(*args), deadline, after)

    async def run_revocable(
        self, fn: Callable[..., T], *args: Any, deadline: Deadline | None = None
    ) -> T:
        """fn(call, *args) on the worker thread. Timeout once the deadline passes, and from
        then on ``call.abandoned``: fn must keep nothing it gets (virtdlm.locker.acquire)."""
        after = "whatever it still gets is released at once"
        return await self._run(_name(fn), lambda call: fn(call, *args), deadline, after)

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue fn(*args) and wait for nothing: it runs in turn, and a failure is logged."""
        call = Call(_name(fn))
        call.abandon()  # nobody waits for it
        if not self.inline:
            self._start(call, lambda _call: fn(*args))
            return
        try:
            fn(*args)
        except Exception as err:  # logged: nobody else will see it
            self._unwaited(call, err)

    def shutdown(self, wait: bool = True) -> None:
        """Wait for the calls in progress and queued, then end the thread. Without `wait`
        (a lockspace that takes no calls: one may block for ever) return at once."""
        self._executor.shutdown(wait=wait)

    # -- the race with the deadline ---------------------------------------------------------

    async def _run(
        self,
        name: str,
        body: Callable[[Call], T],
        deadline: Deadline | None,
        after: str,
    ) -> T:
        if deadline is None:
            deadline = Deadline(self.lockspace, LIFECYCLE_CALL_TIMEOUT_S)
        call = Call(name)
        if self.inline:
            return body(call)
        future = self._start(call, body)
        try:
            await asyncio.wait({future}, timeout=deadline.left())
        except BaseException:
            call.abandon()  # the caller is cancelled: nobody will take the outcome
            raise
        if not future.done() and call.abandon():
            raise deadline.expired(
                f"backend call {name} did not finish in {deadline.budget_s:g} s "
                f"({self._progress(call)}); the DLM may be blocked (check 'dlm_tool status'); "
                f"{after}"
            )
        return await future  # done, or committed a moment ago: its result is on its way

    def _start(self, call: Call, body: Callable[[Call], T]) -> asyncio.Future[T]:
        self._calls.append(call)
        future = asyncio.wrap_future(self._executor.submit(self._execute, call, body))
        future.add_done_callback(partial(self._finished, call))
        return future

    @staticmethod
    def _execute(call: Call, body: Callable[[Call], T]) -> T:
        """On the worker thread: run the call, then commit whatever it did (a revocable
        call commits by itself first; committing again changes nothing)."""
        call.started = time.monotonic()
        try:
            return body(call)
        finally:
            call.commit()

    def _progress(self, call: Call) -> str:
        """Where the call stands, for a Timeout: running, or queued behind whom."""
        now = time.monotonic()
        if call.started is not None:
            return f"running for {now - call.started:.1f} s"
        ahead = self._calls[: self._calls.index(call)] if call in self._calls else []
        busy = ""
        for other in ahead:
            if other.started is not None:
                busy = f"; {other.name} running for {now - other.started:.1f} s"
                break
        return f"not begun, queued behind {len(ahead)} earlier calls{busy}"

    def _finished(self, call: Call, future: asyncio.Future[Any]) -> None:
        """On the event loop, as each call ends: log the end of a call nobody waits for."""
        self._calls.remove(call)
        if future.cancelled():
            return
        err = future.exception()  # retrieved here, whether or not a caller takes it too
        if call.abandoned:
            self._unwaited(call, err)

    def _unwaited(self, call: Call, err: BaseException | None) -> None:
        if err is None:
            log.debug("%s: backend call %s ended; nobody waited for it", self.lockspace, call.name)
        elif isinstance(err, VirtDlmError):
            log.info(
                "%s: backend call %s failed; nobody waited for it: %s",
                self.lockspace,
                call.name,
                err,
            )
        else:
            log.error("%s: backend call %s failed: %r", self.lockspace, call.name, err)
            log.debug("%s: backend call %s", self.lockspace, call.name, exc_info=err)


def _name(fn: Callable[..., object]) -> str:
    return str(getattr(fn, "__name__", fn))
