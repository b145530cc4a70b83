"""The one exception tree of virtdlm and the wire error codes.

VirtDlmError
├── ConfigError          bad configuration file or value (file, line, reason)
├── ProtocolError        malformed, truncated or oversized frame
├── InvalidRequest       well-formed frame asking for something invalid
├── Denied               the peer may not do this (credentials, pid mismatch, restricted)
├── Busy                 a lock is held by someone else (carries the holder)
├── PolicyError          configuration forbids the request
├── NoSuchProcess        the owner's pid is gone
├── LockspaceUnavailable this node's lockspace cannot be used now (stopped, gone, no quorum)
├── Timeout              a deadline passed (what, how long, last state)
├── DaemonUnavailable    client side: the daemon cannot be reached
├── RemoteError          client side: the daemon replied with an error
└── BackendError         the DLM (or the model) failed; keeps the raw errno
    ├── BackendUnavailable  the backend cannot be used here (what to install/enable)
    ├── LockBusy            NOQUEUE conflict (EAGAIN): contention, not failure
    └── OrphanNotFound      no orphan to adopt (ENOENT)
"""

from __future__ import annotations

import errno as errno_mod
import os
from dataclasses import dataclass
from enum import IntEnum


class ErrorCode(IntEnum):
    """Stable wire error codes (docs/protocol.md). Append only; never renumber."""

    INTERNAL = 1
    PROTOCOL = 2
    UNSUPPORTED_VERSION = 3
    DENIED = 4
    INVALID_REQUEST = 5
    BUSY = 6
    BACKEND = 7
    TIMEOUT = 8
    RESTRICTED = 9
    POLICY = 10
    NO_SUCH_PROCESS = 11
    SHUTTING_DOWN = 12
    LOCKSPACE_UNAVAILABLE = 13


class VirtDlmError(Exception):
    """Root of every error virtdlm raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL


class ConfigError(VirtDlmError):
    code = ErrorCode.INVALID_REQUEST

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class ProtocolError(VirtDlmError):
    code = ErrorCode.PROTOCOL


class UnsupportedVersion(ProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION


class InvalidRequest(VirtDlmError):
    code = ErrorCode.INVALID_REQUEST


class Denied(VirtDlmError):
    code = ErrorCode.DENIED


class Restricted(Denied):
    code = ErrorCode.RESTRICTED


class PolicyError(VirtDlmError):
    code = ErrorCode.POLICY


class NoSuchProcess(VirtDlmError):
    code = ErrorCode.NO_SUCH_PROCESS


class LockspaceUnavailable(VirtDlmError):
    """This node's lockspace cannot be used now: the message says why, since when, and
    what to check. Starts (register, acquire) are refused at once instead of waiting on a DLM
    call that would block."""

    code = ErrorCode.LOCKSPACE_UNAVAILABLE


class Timeout(VirtDlmError):
    code = ErrorCode.TIMEOUT


class ShuttingDown(VirtDlmError):
    code = ErrorCode.SHUTTING_DOWN


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as far as the refusing side can tell."""

    domain: str
    node: str
    mode: str  # "EX", "PR" or "?" when unknown

    def describe(self) -> str:
        how = {"EX": "exclusively", "PR": "shared"}.get(self.mode, "")
        by = f"by {self.domain or 'an unknown domain'} on {self.node or 'an unknown node'}"
        return f"{how} {by}" if how else by


class Busy(VirtDlmError):
    """A resource is held by someone else; the message names the resource and the holder."""

    code = ErrorCode.BUSY

    def __init__(self, kind: str, resource: str, holder: Holder | None) -> None:
        self.kind = kind
        self.resource = resource
        self.holder = holder
        if holder is None:
            fact = "is locked by another owner (holder unknown)"
        else:
            fact = f"is locked {holder.describe()}"
        # libvirt prints VIR_ERR_RESOURCE_BUSY as "resource busy: %s": no prefix here.
        super().__init__(f"{kind} {resource} {fact}")


class DaemonUnavailable(VirtDlmError):
    def __init__(self, socket_path: str, err: OSError) -> None:
        reason = err.strerror or str(err)
        super().__init__(
            f"virtdlmd is not running (socket {socket_path}: {reason}); "
            "start it with 'virtdlmd' or 'systemctl start virtdlmd'"
        )
        self.socket_path = socket_path


class RemoteError(VirtDlmError):
    """The daemon answered with an error reply."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.remote_code = code
        self.remote_name = name
        self.remote_message = message


class BackendError(VirtDlmError):
    code = ErrorCode.BACKEND

    def __init__(self, what: str, err: int = 0) -> None:
        detail = f": {os.strerror(err)} (errno {errno_mod.errorcode.get(err, err)})" if err else ""
        super().__init__(f"{what}{detail}")
        self.errno = err


class BackendUnavailable(BackendError):
    pass


class LockBusy(BackendError):
    """NOQUEUE request refused because of a conflicting granted lock (EAGAIN)."""

    def __init__(self, what: str) -> None:
        super().__init__(what, errno_mod.EAGAIN)


class OrphanNotFound(BackendError):
    def __init__(self, what: str) -> None:
        super().__init__(what, errno_mod.ENOENT)
