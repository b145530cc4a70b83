"""A blocking client of virtdlmd: one request, one reply, with deadlines.

Used by the CLI, the lab, the tests and the benchmarks. ``Client`` keeps one connection
open for many requests; its typed methods (``register``, ``acquire``, ``release``,
``status``, ``locks``) raise RemoteError on an error reply, ``send`` returns any reply as it
came. ``status``, ``locks`` and ``call`` at module level are the one-shot forms.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from . import protocol
from .errors import DaemonUnavailable, ProtocolError, RemoteError, Timeout
from .protocol import DEFAULT_ACTION, OwnerSpec, Request, ResourceSpec, recv_frame

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

    def send(self, request: Request) -> dict[str, Any]:
        """Send one request, return the reply as it came (ok or not)."""
        return self.raw(protocol.request_message(request))

    def _ask(self, request: Request) -> dict[str, Any]:
        return self.request(protocol.request_message(request))

    def register(
        self,
        owner: OwnerSpec,
        resources: Sequence[ResourceSpec] = (),
        restrict: bool = False,
        action: str = DEFAULT_ACTION,
    ) -> None:
        """Register the calling process as the owner (its pid must be owner.pid); the
        connection then stands for that QEMU: its EOF releases the owner's locks. `action`
        is the domain's on_lockfailure (protocol.ACTIONS)."""
        self._ask(Request("register", owner, tuple(resources), restrict, action))

    def acquire(
        self, owner: OwnerSpec, resources: Sequence[ResourceSpec], action: str = DEFAULT_ACTION
    ) -> None:
        """Lock every resource for the owner, or none of them (Busy comes back as RemoteError);
        `action` is the domain's on_lockfailure (protocol.ACTIONS)."""
        self._ask(Request("acquire", owner, tuple(resources), action=action))

    def release(self, owner: OwnerSpec, resources: Sequence[ResourceSpec] = ()) -> None:
        """Release the named resources of the owner; none named = everything it holds."""
        self._ask(Request("release", owner, tuple(resources)))

    def status(self) -> dict[str, Any]:
        """The daemon's status: backend, node, lockspace, counts."""
        return dict(self._ask(Request("status"))["status"])

    def locks(self) -> list[dict[str, Any]]:
        """Every lock this daemon holds, one record each."""
        return list(self._ask(Request("locks"))["locks"])

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
