"""virtdlmd in this process: the real Daemon (socket, worker, health monitor, lock-failure
actions) on an event loop thread of its own, over a backend the test holds.

Running in the test's process lets the test and the daemon's threads see the same state: the
model DLM's locks and health, and the libvirt test driver's domains (test:///default keeps one
state per process, shared by every connection to it), which on_lockfailure acts on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from virtdlm.backends.base import LockBackend
from virtdlm.client import Client
from virtdlm.config import Config
from virtdlm.daemon import Daemon
from virtdlm.deadline import REQUEST_TIMEOUT_S
from virtdlm.protocol import Request

T = TypeVar("T")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class DaemonThread:
    """virtdlmd (the real Daemon, socket and all) on an event loop thread of this process."""

    def __init__(
        self, config: Config, backend: LockBackend, request_timeout_s: float = REQUEST_TIMEOUT_S
    ) -> None:
        self.config = config
        self.backend = backend
        self.request_timeout_s = request_timeout_s
        self.daemon: Daemon | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serving: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="virtdlmd")

    @property
    def socket(self) -> str:
        return self.config.socket_path

    def start(self) -> DaemonThread:
        self._thread.start()
        assert self._ready.wait(START_TIMEOUT_S), "virtdlmd did not start"
        assert self._failed is None, f"virtdlmd failed to start: {self._failed!r}"
        return self

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.daemon = Daemon(self.config, lambda: self.backend, self.request_timeout_s)
        try:
            await self.daemon.start()
        except BaseException as err:  # reported by start() in the test's thread
            self._failed = err
            self._ready.set()
            return
        self._serving = asyncio.ensure_future(self.daemon.serve_forever())
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._serving
        await self.daemon.stop()

    def stop(self) -> None:
        if self._loop is not None and self._serving is not None:
            self._loop.call_soon_threadsafe(self._serving.cancel)
        self._thread.join(STOP_TIMEOUT_S)
        assert not self._thread.is_alive(), "virtdlmd did not stop"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the daemon's loop (e.g. one health reading), wait for it."""
        assert self._loop is not None, "virtdlmd is not running"
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(STOP_TIMEOUT_S)

    def send(self, request: Request) -> dict[str, Any]:
        with Client(self.socket) as client:
            return client.send(request)

    def status(self) -> dict[str, Any]:
        with Client(self.socket) as client:
            return client.status()

    def locks(self) -> list[dict[str, Any]]:
        with Client(self.socket) as client:
            return client.locks()
