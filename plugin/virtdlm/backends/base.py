"""The DLM backend contract: modes, flags, the lock value block, and the LockBackend protocol.

A backend is a handle on one lockspace as one process of one node sees it, offering the
DLM's own primitives (lock, convert, unlock, adopt, purge) with identical signatures in every
implementation. Policy (which mode, NL-then-convert, publishing the holder) lives in
virtdlm.locker, never here. Backends raise only errors.BackendError and its subclasses:
LockBusy for a NOQUEUE conflict (EAGAIN), OrphanNotFound (ENOENT) for adopt, BackendError with
the raw errno for anything else. Calls block; the daemon makes them from one worker thread.

A backend also gives a probe of this node's lock health (``health_probe``): the lockspace's
state, quorum, a pending fence. The probe answers from any thread while a lock call of the same
backend is blocked (a DLM call on a stopped lockspace blocks for ever), so it never shares the
backend's handle or connection. virtdlm.health decides what a reading means.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from enum import IntEnum, IntFlag
from typing import Any, Protocol

LVB_BYTES = 32
MAX_RESOURCE_NAME_BYTES = 64


class Mode(IntEnum):
    """DLM lock modes, ordered so that a stronger mode compares greater."""

    NL = 0
    CR = 1
    CW = 2
    PR = 3
    PW = 4
    EX = 5


class LockFlags(IntFlag):
    """The DLM_LKF_* flags the project uses (values from linux/dlmconstants.h)."""

    NONE = 0
    NOQUEUE = 0x1
    CONVERT = 0x4
    VALBLK = 0x8
    PERSISTENT = 0x80
    EXPEDITE = 0x400
    ORPHAN = 0x4000


# Table 2-1 of the seed thesis: COMPATIBLE[granted][requested].
_C = True
_X = False
COMPATIBLE: dict[Mode, dict[Mode, bool]] = {
    Mode.NL: dict(zip(Mode, (_C, _C, _C, _C, _C, _C), strict=True)),
    Mode.CR: dict(zip(Mode, (_C, _C, _C, _C, _C, _X), strict=True)),
    Mode.CW: dict(zip(Mode, (_C, _C, _C, _X, _X, _X), strict=True)),
    Mode.PR: dict(zip(Mode, (_C, _C, _X, _C, _X, _X), strict=True)),
    Mode.PW: dict(zip(Mode, (_C, _C, _X, _X, _X, _X), strict=True)),
    Mode.EX: dict(zip(Mode, (_C, _X, _X, _X, _X, _X), strict=True)),
}


def compatible(granted: Mode, requested: Mode) -> bool:
    return COMPATIBLE[granted][requested]


def lvb_writes(granted: Mode | None, requested: Mode) -> bool:
    """Whether a request with VALBLK writes the lock's LVB to the resource (else it reads).

    The kernel's dlm_lvb_operations: only a lock granted PW or EX writes, when it converts
    down or to the same mode (EX->EX writes, PW->EX reads); new locks always read.
    """
    if granted is None:
        return False
    if granted == Mode.EX:
        return True
    if granted == Mode.PW:
        return requested != Mode.EX
    return False


# The lockspace as this node sees it (HealthReading.lockspace).
LOCKSPACE_OK = "ok"
LOCKSPACE_STOPPED = "stopped"  # lock calls block (the kernel stopped it; recovery waits)
LOCKSPACE_GONE = "gone"  # this node left it: lock calls fail, its locks went with it
LOCKSPACE_STATES = (LOCKSPACE_OK, LOCKSPACE_STOPPED, LOCKSPACE_GONE)


@dataclass(frozen=True)
class HealthReading:
    """One reading of a health probe: what its sources said. Times are wall-clock seconds
    (time.time()) when the source knows since when; None lets the daemon count from the
    first reading that showed it."""

    lockspace: str = LOCKSPACE_OK  # LOCKSPACE_STATES
    lockspace_detail: str = ""  # why, e.g. "dlm_controld is not running"
    lockspace_since: float | None = None
    quorate: bool | None = None  # None: unknown (no corosync, a tool that did not answer)
    quorum_detail: str = ""  # what the quorum source said
    fencing: str = ""  # e.g. "waiting for fencing of node 2" ("" = none pending)
    fencing_since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HealthReading:
        reading = cls(**data)
        if reading.lockspace not in LOCKSPACE_STATES:
            raise ValueError(
                f"lockspace state {reading.lockspace!r} is not one of {LOCKSPACE_STATES}"
            )
        return reading


class HealthProbe(Protocol):
    """Reads this node's lock health; callable from any thread, never blocks for long."""

    def read(self) -> HealthReading: ...

    def close(self) -> None: ...


class LockBackend(Protocol):
    """One process's handle on one lockspace."""

    name: str  # "libdlm" or "model"
    cluster: bool  # True only for a real cluster-wide DLM
    blocking: bool  # calls may block (I/O, a kernel wait): keep them off the event loop
    lockspace: str
    node_id: int

    def lock(
        self, resource: str, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> tuple[int, bytes | None]:
        """Request a new lock; returns (lkid, LVB read when VALBLK)."""
        ...

    def convert(
        self, lkid: int, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> bytes | None:
        """Convert a granted lock; returns the LVB read when VALBLK and the convert reads."""
        ...

    def unlock(self, lkid: int) -> None: ...

    def adopt(self, resource: str, mode: Mode, flags: LockFlags) -> int:
        """Adopt this node's orphan of `resource` in exactly `mode`; returns its lkid."""
        ...

    def purge(self) -> None:
        """Drop every orphan lock of this node in the lockspace."""
        ...

    def close(self) -> None:
        """Let go of the lockspace handle. Persistent locks stay, as orphans."""
        ...

    def health_probe(self) -> HealthProbe:
        """A probe of this node's lock health that works while a call of this backend blocks."""
        ...


# The lock value block names the exclusive holder, so that a refusal can say who it is:
# version (1) | mode (1) | node length (1) | domain length (1) | node id (4) | 24 bytes text.
_LVB_HEAD = struct.Struct(">BBBBI")
_LVB_VERSION = 1
_LVB_TEXT_BYTES = LVB_BYTES - _LVB_HEAD.size
_MIN_DOMAIN_BYTES = 8


def _clip(text: str, limit: int) -> bytes:
    raw = text.encode()
    if len(raw) <= limit:
        return raw
    return raw[: limit - 1].decode(errors="ignore").encode() + b"~"


def encode_holder(mode: Mode, node_id: int, node: str, domain: str) -> bytes:
    """Pack the holder into 32 bytes; long names are clipped and end in '~'."""
    node_b = _clip(node, _LVB_TEXT_BYTES - min(len(domain.encode()), _MIN_DOMAIN_BYTES))
    domain_b = _clip(domain, _LVB_TEXT_BYTES - len(node_b))
    head = _LVB_HEAD.pack(_LVB_VERSION, int(mode), len(node_b), len(domain_b), node_id)
    return (head + node_b + domain_b).ljust(LVB_BYTES, b"\0")


def decode_holder(lvb: bytes | None) -> tuple[Mode, int, str, str] | None:
    """(mode, node id, node, domain) from an LVB, or None when it names nobody."""
    if not lvb or len(lvb) != LVB_BYTES:
        return None
    version, mode, node_len, domain_len, node_id = _LVB_HEAD.unpack_from(lvb)
    if version != _LVB_VERSION or node_len + domain_len > _LVB_TEXT_BYTES or mode > Mode.EX:
        return None
    text = lvb[_LVB_HEAD.size :]
    node = text[:node_len].decode(errors="replace")
    domain = text[node_len : node_len + domain_len].decode(errors="replace")
    return Mode(mode), node_id, node, domain


EMPTY_LVB = bytes(LVB_BYTES)
