"""virtdlmd: the per-host lock daemon of the libvirt DLM lock manager, and its lifecycle.

    virtdlmd [--config /etc/libvirt/qemu-dlm.conf] [--socket PATH] [--log-level LEVEL]

Logs one line per lock decision to stderr (the journal under systemd). The first SIGTERM or
SIGINT stops it and keeps every lock held (as orphans, adopted by the next start); a second
one exits at once.

``Daemon`` puts the pieces together. Lifecycle: start (open the backend on the worker
thread, adopt what the state records, purge the rest, listen) -> serve -> stop (freeze the
owners, stop listening, close connections, close the backend handle). Locks are never
released on the way down: they stay granted as orphans and the next start adopts them.
Every lock decision runs under one asyncio lock (``decide``), and every backend call on one
worker thread, so decisions are serial and the backend is single-threaded as libdlm needs.
Every request is answered within ``request_timeout_s`` (virtdlm.deadline), before the client
gives up; a backend call that ends after its request was answered keeps nothing. This node's
lock health is read every ``health_interval_s`` by the backend's probe on a thread of its own
(never the worker: a DLM call on a stopped lockspace blocks); while it is bad, starts are
refused at once, and once the locks count as lost each domain gets its on_lockfailure.

    server.py    socket, peer check, frames  -> handlers.py  one function per op
    registry.py  owners and their lifetimes  -> locker.py    lock decisions, what is held
    policy.py    which locks a request needs    worker.py    the backend's thread
    health.py    lock health, its monitor    -> lockfailure.py  on_lockfailure, via libvirt
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from . import handlers
from .backends.base import LockBackend
from .config import DEFAULT_CONFIG_PATH, Config, load_config
from .deadline import REQUEST_TIMEOUT_S
from .errors import VirtDlmError
from .health import HealthMonitor, LockHealth
from .locker import Locker
from .lockfailure import LibvirtActuator, LockFailureHandler
from .owners import StateStore
from .registry import OwnerRegistry
from .server import Server
from .worker import Worker

log = logging.getLogger("virtdlmd")
EXIT_CONFIG = 2
EXIT_FAILED = 1


class Daemon:
    def __init__(
        self,
        config: Config,
        backend_factory: Callable[[], LockBackend],
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.config = config
        self._backend_factory = backend_factory
        self.request_timeout_s = request_timeout_s  # every request is answered within this
        self.worker = Worker(config.lockspace_name)
        self.decide = asyncio.Lock()
        self.store = StateStore(config.state_dir)
        self.server = Server(
            config, partial(handlers.dispatch, self), partial(handlers.closed, self)
        )
        self.stopping = False
        self.started = time.monotonic()
        self._locker: Locker | None = None
        self._registry: OwnerRegistry | None = None
        self._monitor: HealthMonitor | None = None
        self._lockfailure: LockFailureHandler | None = None

    @property
    def locker(self) -> Locker:
        assert self._locker is not None, "the daemon has not started"
        return self._locker

    @property
    def registry(self) -> OwnerRegistry:
        assert self._registry is not None, "the daemon has not started"
        return self._registry

    @property
    def monitor(self) -> HealthMonitor:
        assert self._monitor is not None, "the daemon has not started"
        return self._monitor

    @property
    def health(self) -> LockHealth:
        """This node's lock health after the last reading (virtdlm.health)."""
        assert self._monitor is not None, "the daemon has not started"
        return self._monitor.health

    @property
    def lockfailure(self) -> LockFailureHandler:
        assert self._lockfailure is not None, "the daemon has not started"
        return self._lockfailure

    async def start(self) -> None:
        config = self.config
        backend = await self.worker.run(self._backend_factory)
        self.worker.inline = not backend.blocking
        self._locker = Locker(backend, config.effective_node_name)
        self._monitor = HealthMonitor(
            backend.health_probe(),
            backend.lockspace,
            self._locker.node_name,
            config.health_interval_s,
            config.quorum_grace_s,
        )
        await self._monitor.check()  # starts are judged by a real reading from the first one
        self._registry = OwnerRegistry(
            self._locker, self.store, self.worker, lambda: self.health.usable
        )
        await self._registry.recover(config.purge_orphans)
        self._lockfailure = LockFailureHandler(
            self._registry, self._locker, self.worker, LibvirtActuator(config.lockfailure_uri)
        )
        self._monitor.listeners.append(self._lockfailure.on_health)
        self._monitor.start()
        await self.server.start()
        if not backend.cluster:
            log.warning(
                "backend %s is a single-host model, NOT a cluster lock: use it for "
                "tests and trials only",
                backend.name,
            )
        log.info(
            "serving on %s: backend %s, lockspace %s, node %s (id %d)",
            self.config.socket_path,
            backend.name,
            backend.lockspace,
            self._locker.node_name,
            backend.node_id,
        )

    async def serve_forever(self) -> None:
        await self.server.serve_forever()

    async def stop(self) -> None:
        """Stop listening, drop connections, keep every lock (they become orphans)."""
        if self.stopping:
            return
        self.stopping = True
        if self._registry is not None:
            self._registry.freeze()
        if self._monitor is not None:
            await self._monitor.stop()
        if self._lockfailure is not None:
            self._lockfailure.close()
        await self.server.stop()
        usable = self._monitor is None or self.health.usable
        if self._locker is not None and usable:
            await self.worker.run(self._locker.backend.close)
        elif self._locker is not None:
            log.warning(
                "%s; its handle is left to this process's exit (a DLM call may be blocked)",
                self.health.describe(),
            )
        self.worker.shutdown(wait=usable)
        self.server.remove_socket()
        log.info(
            "stopped; %d locks of %d owners stay held for the next start",
            self._locker.lock_count() if self._locker is not None else 0,
            len(self._registry) if self._registry is not None else 0,
        )


def backend_factory(config: Config) -> Callable[[], LockBackend]:
    """How to open the configured backend; called on the daemon's worker thread."""
    if config.backend == "dlm":

        def open_libdlm() -> LockBackend:
            from .backends.libdlm import LibDlmBackend

            return LibDlmBackend(config.lockspace_name)

        return open_libdlm
    if config.model_socket:

        def open_remote_model() -> LockBackend:
            from .backends.model_server import RemoteModelBackend

            return RemoteModelBackend(
                config.model_socket, config.model_node_id, config.lockspace_name
            )

        return open_remote_model

    def open_model() -> LockBackend:
        from .backends.model import ModelDlm

        log.warning(
            "model backend without model_socket: locks live inside this process and "
            "do not survive a restart of virtdlmd"
        )
        return ModelDlm(config.lockspace_name).session(config.model_node_id)

    return open_model


async def run(config: Config) -> None:
    daemon = Daemon(config, backend_factory(config))
    await daemon.start()
    loop = asyncio.get_running_loop()
    serving = asyncio.ensure_future(daemon.serve_forever())
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_FAILED)
        log.info("%s: stopping; locks stay held", signal.Signals(signum).name)
        serving.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await serving
    except asyncio.CancelledError:
        pass
    finally:
        await daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="virtdlmd", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG_PATH,
        help="configuration file (default %(default)s; absent = defaults)",
    )
    parser.add_argument("--socket", help="override socket_path from the configuration")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VIRTDLMD_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s virtdlmd[%(process)d] %(levelname)s %(message)s",
    )
    try:
        config = load_config(args.config, required=args.config != DEFAULT_CONFIG_PATH)
        if args.socket:
            config = replace(config, socket_path=args.socket)
        asyncio.run(run(config))
    except VirtDlmError as err:
        log.error("%s", err)
        log.debug("details", exc_info=True)
        return EXIT_CONFIG if err.__class__.__name__ == "ConfigError" else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
