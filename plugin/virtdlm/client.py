"""A blocking client of virtdlmd: one request, one reply, with deadlines.

Used by the CLI, the tests and the benchmarks. ``Client`` keeps one connection open for
many requests; ``call`` is the one-shot form.
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Any

from . import protocol
from .backends.model_server import recv_frame
from .errors import DaemonUnavailable, ProtocolError, RemoteError, Timeout

CONNECT_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 30.0


class Client:
    def __init__(self, socket_path: str, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            self.sock.connect(socket_path)
        except OSError as err:
            self.sock.close()
            raise DaemonUnavailable(socket_path, err) from err
        self.sock.settimeout(timeout_s)
        self.timeout_s = timeout_s

    def raw(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message, return the reply as it came (ok or not)."""
        try:
            self.sock.sendall(protocol.encode_frame(message))
            reply = recv_frame(self.sock)
        except TimeoutError as err:
            raise Timeout(
                f"virtdlmd at {self.socket_path} did not answer "
                f"{message.get('op')!r} in {self.timeout_s:.0f} s"
            ) from err
        except OSError as err:
            raise DaemonUnavailable(self.socket_path, err) from err
        if reply is None:
            raise ProtocolError(
                f"virtdlmd at {self.socket_path} closed the connection "
                f"without answering {message.get('op')!r}"
            )
        return reply

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message; raise RemoteError on an error reply."""
        reply = self.raw(message)
        if not reply.get("ok"):
            raise RemoteError(
                int(reply.get("code", 0)), str(reply.get("error")), str(reply.get("message"))
            )
        return reply

    def status(self) -> dict[str, Any]:
        """The daemon's status: backend, node, lockspace, counts."""
        reply = self.request({"v": protocol.PROTOCOL_VERSION, "op": "status"})
        return {k: v for k, v in reply.items() if k not in ("ok", "v")}

    def locks(self) -> list[dict[str, Any]]:
        """Every lock this daemon holds, one record each."""
        reply = self.request({"v": protocol.PROTOCOL_VERSION, "op": "locks"})
        return list(reply["locks"])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def call(
    socket_path: str, message: dict[str, Any], timeout_s: float = REPLY_TIMEOUT_S
) -> dict[str, Any]:
    with Client(socket_path, timeout_s) as client:
        return client.request(message)


def status(socket_path: str, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    with Client(socket_path, timeout_s) as client:
        return client.status()


def locks(socket_path: str, timeout_s: float = REPLY_TIMEOUT_S) -> list[dict[str, Any]]:
    with Client(socket_path, timeout_s) as client:
        return client.locks()
