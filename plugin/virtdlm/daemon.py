"""virtdlmd: the per-host lock daemon of the libvirt DLM lock manager.

    virtdlmd [--config /etc/libvirt/qemu-dlm.conf] [--socket PATH] [--log-level LEVEL]

Logs one line per lock decision to stderr (the journal under systemd). The first SIGTERM or
SIGINT stops it and keeps every lock held (as orphans, adopted by the next start); a second
one exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

from .backends.base import LockBackend
from .config import DEFAULT_CONFIG_PATH, Config, load_config
from .errors import VirtDlmError
from .server import Daemon

log = logging.getLogger("virtdlmd")
EXIT_CONFIG = 2
EXIT_FAILED = 1


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
