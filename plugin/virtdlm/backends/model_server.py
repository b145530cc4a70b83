"""Serve one ModelDlm to other processes, playing the kernel's part for the model backend.

Each connection is one session (one process on one node); when it drops, its persistent
locks become orphans, exactly as when a process holding kernel DLM locks exits. This lets
tests kill a daemon with -9 and watch it adopt its orphans on restart, and lets two daemons
on one host play two nodes. Not a cluster lock.

    python -m virtdlm.backends.model_server --socket PATH [--lockspace NAME]

Wire: the framing of virtdlm.protocol; requests {"op", ...}, replies {"ok", ...} or
{"ok": false, "errno": N, "kind": "busy"|"orphan"|"error", "message": str}. A connection
that starts with {"op": "hello", "node_id": N} is a session; one that starts with
{"op": "observe"} is no session and may only ask "health" (a node's lock health, for its
health probe, which must answer while a session's call blocks) and "set_health" (tests:
ModelDlm.set_health; ``set_model_health`` below).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import socket
import socketserver
import threading
from typing import Any

from .. import protocol
from ..errors import BackendError, BackendUnavailable, LockBusy, OrphanNotFound, ProtocolError
from ..protocol import recv_frame
from .base import LOCKSPACE_OK, HealthReading, LockFlags, Mode
from .model import ModelBackend, ModelDlm

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 30.0


def _lvb_in(value: Any) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def _lvb_out(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


class _Handler(socketserver.BaseRequestHandler):
    server: ModelServer

    def handle(self) -> None:
        dlm = self.server.dlm
        hello = recv_frame(self.request)
        if hello and hello.get("op") == "observe":
            self._observe(dlm)
            return
        if not hello or hello.get("op") != "hello" or not isinstance(hello.get("node_id"), int):
            return
        session = dlm.session(hello["node_id"])
        sid = session._sid
        self.server.attach(self.request, session)
        try:
            self.request.sendall(protocol.encode_frame({"ok": True, "session": sid}))
            while (req := recv_frame(self.request)) is not None:
                self.server.reap_dead_sessions()
                self.request.sendall(protocol.encode_frame(self._call(session, req)))
        except (OSError, ProtocolError) as err:
            log.debug("model session %d: %s", sid, err)
        finally:
            self.server.detach(self.request)
            session.close()

    def _observe(self, dlm: ModelDlm) -> None:
        """A connection that is no session: lock health only (read it, or set it)."""
        try:
            self.request.sendall(protocol.encode_frame({"ok": True}))
            while (req := recv_frame(self.request)) is not None:
                self.request.sendall(protocol.encode_frame(self._health_call(dlm, req)))
        except (OSError, ProtocolError) as err:
            log.debug("model observer: %s", err)

    @staticmethod
    def _health_call(dlm: ModelDlm, req: dict[str, Any]) -> dict[str, Any]:
        try:
            node_id = req["node_id"]
            if not isinstance(node_id, int):
                raise TypeError(f"node_id {node_id!r} is not an integer")
            if req.get("op") == "health":
                return {"ok": True, "health": dlm.health(node_id).to_json()}
            if req.get("op") == "set_health":
                dlm.set_health(
                    node_id, req["lockspace"], req.get("quorate"), req.get("fencing_node")
                )
                return {"ok": True}
            return {"ok": False, "errno": 22, "kind": "error", "message": f"unknown op {req!r}"}
        except (KeyError, ValueError, TypeError) as err:
            return {"ok": False, "errno": 22, "kind": "error", "message": f"bad request: {err}"}

    @staticmethod
    def _call(session: Any, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        try:
            flags = LockFlags(req.get("flags", 0))
            if op == "lock":
                lkid, lvb = session.lock(
                    req["resource"], Mode(req["mode"]), flags, _lvb_in(req.get("lvb"))
                )
                return {"ok": True, "lkid": lkid, "lvb": _lvb_out(lvb)}
            if op == "convert":
                lvb = session.convert(
                    req["lkid"], Mode(req["mode"]), flags, _lvb_in(req.get("lvb"))
                )
                return {"ok": True, "lvb": _lvb_out(lvb)}
            if op == "unlock":
                session.unlock(req["lkid"])
                return {"ok": True}
            if op == "adopt":
                return {
                    "ok": True,
                    "lkid": session.adopt(req["resource"], Mode(req["mode"]), flags),
                }
            if op == "purge":
                session.purge()
                return {"ok": True}
            return {"ok": False, "errno": 22, "kind": "error", "message": f"unknown op {op!r}"}
        except LockBusy as err:
            return {"ok": False, "errno": err.errno, "kind": "busy", "message": str(err)}
        except OrphanNotFound as err:
            return {"ok": False, "errno": err.errno, "kind": "orphan", "message": str(err)}
        except BackendError as err:
            return {"ok": False, "errno": err.errno, "kind": "error", "message": str(err)}
        except (KeyError, ValueError, TypeError) as err:
            return {"ok": False, "errno": 22, "kind": "error", "message": f"bad request: {err}"}


class ModelServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, dlm: ModelDlm) -> None:
        self.dlm = dlm
        self._sessions: dict[socket.socket, ModelBackend] = {}
        self._sessions_mutex = threading.Lock()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old = os.umask(0o077)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)

    def attach(self, sock: socket.socket, session: ModelBackend) -> None:
        with self._sessions_mutex:
            self._sessions[sock] = session

    def detach(self, sock: socket.socket) -> None:
        with self._sessions_mutex:
            self._sessions.pop(sock, None)

    def reap_dead_sessions(self) -> None:
        """Close every session whose process hung up, before serving anyone else.

        The kernel turns a dead process's locks into orphans as the process exits, so no
        other process can see them held by it afterwards; a handler thread here may not have
        read its peer's EOF yet, so each call first closes the sessions of peers that are
        gone (POLLRDHUP), as the kernel would have.
        """
        with self._sessions_mutex:
            live = list(self._sessions.items())
        poller = select.poll()
        by_fd = {}
        for sock, session in live:
            fd = sock.fileno()
            if fd >= 0:  # -1: its handler has just closed it, and its session
                poller.register(fd, select.POLLRDHUP)
                by_fd[fd] = session
        for fd, _events in poller.poll(0):  # POLLRDHUP, or POLLHUP/POLLERR/POLLNVAL
            by_fd[fd].close()  # idempotent


class _Connection:
    """One connection to a model server, opened with a greeting (`hello` for a session,
    `observe` for lock health only); one request and its reply at a time."""

    def __init__(self, path: str, greeting: dict[str, Any], unreachable_hint: str) -> None:
        self.path = path
        self._mutex = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            self._sock.connect(path)
            self._sock.settimeout(CALL_TIMEOUT_S)
            self._sock.sendall(protocol.encode_frame(greeting))
            reply = recv_frame(self._sock)
        except (OSError, ProtocolError) as err:
            self._sock.close()
            raise BackendUnavailable(
                f"model server at {path} is not reachable ({err}){unreachable_hint}",
                getattr(err, "errno", 0) or 0,
            ) from err
        if not reply or not reply.get("ok"):
            self._sock.close()
            raise BackendUnavailable(
                f"model server at {path} refused the {greeting['op']}: {reply}"
            )

    def exchange(self, req: dict[str, Any]) -> dict[str, Any]:
        """The server's reply, whatever it says; a transport failure raises."""
        with self._mutex:
            try:
                self._sock.sendall(protocol.encode_frame(req))
                reply = recv_frame(self._sock)
            except (OSError, ProtocolError) as err:
                raise BackendError(f"model server {self.path} {req.get('op')}: {err}") from err
        if reply is None:
            raise BackendError(f"model server {self.path} closed during {req.get('op')}")
        return reply

    def close(self) -> None:
        with self._mutex:
            self._sock.close()


class RemoteModelHealthProbe:
    """HealthProbe of one node on a model server, on a connection of its own."""

    def __init__(self, path: str, node_id: int) -> None:
        self._observer = _Connection(path, {"op": "observe"}, "")
        self._node_id = node_id

    def read(self) -> HealthReading:
        reply = self._observer.exchange({"op": "health", "node_id": self._node_id})
        if not reply.get("ok"):
            raise BackendError(f"model server {self._observer.path} health: {reply}")
        return HealthReading.from_json(reply["health"])

    def close(self) -> None:
        self._observer.close()


def set_model_health(
    path: str,
    node_id: int,
    lockspace: str = LOCKSPACE_OK,
    quorate: bool | None = True,
    fencing_node: int | None = None,
) -> None:
    """Set a node's lock health on a model server (tests): ModelDlm.set_health, remotely."""
    observer = _Connection(path, {"op": "observe"}, "")
    try:
        reply = observer.exchange(
            {
                "op": "set_health",
                "node_id": node_id,
                "lockspace": lockspace,
                "quorate": quorate,
                "fencing_node": fencing_node,
            }
        )
    finally:
        observer.close()
    if not reply.get("ok"):
        raise BackendError(f"model server {path} set_health: {reply}")


class RemoteModelBackend:
    """LockBackend talking to a model server: one connection = one session."""

    name = "model"
    cluster = False
    blocking = True

    def __init__(self, path: str, node_id: int, lockspace: str = "libvirt") -> None:
        self.node_id = node_id
        self.lockspace = lockspace
        self._path = path
        hint = f"; start it with 'python -m virtdlm.backends.model_server --socket {path}'"
        self._conn = _Connection(path, {"op": "hello", "node_id": node_id}, hint)

    def _call(self, **req: Any) -> dict[str, Any]:
        reply = self._conn.exchange(req)
        if reply.get("ok"):
            return reply
        kind, message = reply.get("kind"), str(reply.get("message"))
        if kind == "busy":
            raise LockBusy(message)
        if kind == "orphan":
            raise OrphanNotFound(message)
        failure = BackendError(message)  # the server's message already names the errno
        failure.errno = int(reply.get("errno", 0))
        raise failure

    def lock(
        self, resource: str, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> tuple[int, bytes | None]:
        r = self._call(
            op="lock", resource=resource, mode=int(mode), flags=int(flags), lvb=_lvb_out(lvb)
        )
        return int(r["lkid"]), _lvb_in(r.get("lvb"))

    def convert(
        self, lkid: int, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> bytes | None:
        r = self._call(op="convert", lkid=lkid, mode=int(mode), flags=int(flags), lvb=_lvb_out(lvb))
        return _lvb_in(r.get("lvb"))

    def unlock(self, lkid: int) -> None:
        self._call(op="unlock", lkid=lkid)

    def adopt(self, resource: str, mode: Mode, flags: LockFlags) -> int:
        return int(
            self._call(op="adopt", resource=resource, mode=int(mode), flags=int(flags))["lkid"]
        )

    def purge(self) -> None:
        self._call(op="purge")

    def close(self) -> None:
        self._conn.close()

    def health_probe(self) -> RemoteModelHealthProbe:
        return RemoteModelHealthProbe(self._path, self.node_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an in-memory model DLM (tests only).")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--lockspace", default="libvirt")
    parser.add_argument("--pid-file", help="write the server's pid here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="model-server: %(message)s")
    server = ModelServer(args.socket, ModelDlm(args.lockspace))
    if args.pid_file:
        with open(args.pid_file, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("serving model lockspace %s on %s (not a cluster lock)", args.lockspace, args.socket)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
