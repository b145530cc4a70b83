"""virtdlmd's unix socket server: listen, accept, check the peer, read and write frames.

The socket is systemd's (socket activation) or one this server creates with its final
permissions (0600, never chmod after bind). Each connection is checked once on accept
(SO_PEERCRED: root, the daemon's own uid, or the configured group) and bounded
(MAX_CLIENTS), then reads frames and hands each one to ``dispatch`` (virtdlm.handlers),
which answers it and says whether to hang up. What a request means is none of this
module's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from . import protocol
from .config import Config
from .errors import Denied, ProtocolError, ShuttingDown, VirtDlmError
from .handlers import Reply, Session

log = logging.getLogger(__name__)

MAX_CLIENTS = 1024
IDLE_TIMEOUT_S = 60.0  # an unregistered connection may stay silent this long
FRAME_TIMEOUT_S = 5.0  # a frame's body must follow its header within this
DRAIN_TIMEOUT_S = 5.0  # at stop, connections get this long to end by themselves
SD_LISTEN_FDS_START = 3
SOCKET_UMASK = 0o177  # the socket is born 0600
SOCKET_DIR_MODE = 0o755
_PEERCRED = struct.Struct("3i")

Dispatch = Callable[[Session, dict[str, Any]], Awaitable[tuple[Reply, bool]]]
Closed = Callable[[Session], Awaitable[None]]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def activation_socket() -> socket.socket | None:
    """The listening socket systemd passed (virtdlmd.socket), if started that way."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    os.set_inheritable(sock.fileno(), False)
    return sock


def peer_allowed(uid: int, gid: int, allowed_gid: int | None) -> bool:
    if uid in (0, os.getuid()):
        return True
    if allowed_gid is None:
        return False
    if gid == allowed_gid:
        return True
    try:
        import pwd

        user = pwd.getpwuid(uid).pw_name
        return allowed_gid in os.getgrouplist(user, gid)
    except KeyError:
        return False


class Server:
    def __init__(self, config: Config, dispatch: Dispatch, closed: Closed) -> None:
        self.config = config
        self.allowed_gid = config.allowed_gid()
        self._dispatch = dispatch
        self._closed = closed
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._server: asyncio.AbstractServer | None = None
        self._activated = False

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    # -- listening ----------------------------------------------------------------------

    async def start(self) -> None:
        activated = activation_socket()
        if activated is not None:
            self._activated = True
            self._server = await asyncio.start_unix_server(
                self._on_connect, sock=activated, limit=protocol.MAX_FRAME_BYTES
            )
            return
        path = self.config.socket_path
        os.makedirs(os.path.dirname(path), mode=SOCKET_DIR_MODE, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old = os.umask(SOCKET_UMASK)  # never chmod after bind
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect, path=path, limit=protocol.MAX_FRAME_BYTES
            )
        finally:
            os.umask(old)

    async def serve_forever(self) -> None:
        assert self._server is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._server.serve_forever()

    async def stop(self) -> None:
        """Stop listening and end every connection."""
        if self._server is not None:
            self._server.close()
        # End each connection by aborting its transport: its read sees EOF and its task
        # finishes by itself (cancelling tasks started by start_unix_server makes asyncio
        # log a spurious CancelledError). Stragglers are cancelled after a deadline.
        for writer in list(self._conns.values()):
            writer.transport.abort()
        if self._conns:
            _done, late = await asyncio.wait(list(self._conns), timeout=DRAIN_TIMEOUT_S)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def remove_socket(self) -> None:
        """Remove the socket path this server created (systemd owns an activated one)."""
        if not self._activated:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.socket_path)

    # -- connections ----------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
            peer = logging.LoggerAdapter(log, {"peer": f"pid={pid} uid={uid}"})
            session = Session(pid, uid, gid, peer)
            try:
                await self._converse(session, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError) as err:
                session.log.debug("connection from pid %d uid %d dropped: %s", pid, uid, err)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                await self._closed(session)
        finally:
            self._conns.pop(task, None)

    async def _converse(
        self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Check the peer once, then answer frames until EOF or a refusal."""
        if not peer_allowed(session.uid, session.gid, self.allowed_gid):
            group = self.config.allowed_group
            await self._refuse(
                session,
                writer,
                Denied(
                    f"uid {session.uid} may not use virtdlmd (root only"
                    f"{', or group ' + group if group else ''})"
                ),
            )
            return
        if self.connection_count > MAX_CLIENTS:
            await self._refuse(
                session, writer, ShuttingDown(f"too many clients ({MAX_CLIENTS}); retry later")
            )
            return
        while True:
            idle = None if session.registered else IDLE_TIMEOUT_S
            try:
                message = await protocol.read_frame(reader, idle, FRAME_TIMEOUT_S)
            except ProtocolError as err:
                await self._refuse(session, writer, err)
                return
            if message is None:
                return
            reply, hang_up = await self._dispatch(session, message)
            if hang_up:
                with contextlib.suppress(ConnectionError):
                    await _send(writer, reply)
                return
            await _send(writer, reply)

    @staticmethod
    async def _refuse(session: Session, writer: asyncio.StreamWriter, err: VirtDlmError) -> None:
        session.log.warning("peer pid %d uid %d: %s", session.pid, session.uid, err)
        with contextlib.suppress(ConnectionError):
            await _send(writer, protocol.error_reply(err))


async def _send(writer: asyncio.StreamWriter, reply: Reply) -> None:
    writer.write(protocol.encode_frame(reply))
    await writer.drain()
