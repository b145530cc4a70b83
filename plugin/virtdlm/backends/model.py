"""The model backend: an in-memory DLM with the real semantics. NOT a cluster lock.

For unit tests and single-host trials only. It models one lockspace of a DLM: the six modes
and the compatibility matrix (thesis table 2-1), NOQUEUE refusal, converts, the lock value
block (read/write as the kernel's dlm_lvb_operations), PERSISTENT locks that become orphans
when the session holding them goes away, adoption of orphans, and purge.

A *session* plays one process on one node: ``ModelDlm.session(node_id)`` returns a
``ModelBackend`` (the LockBackend contract). Closing a session is the process exiting.
The same ModelDlm can be served to other processes by virtdlm.backends.model_server, so
that a daemon killed with -9 leaves orphans behind exactly like the kernel DLM does.

Each node's lock health is set by tests (``set_health``) and read by the health probe,
without the model's calls: a *stopped* lockspace makes that node's calls block until it runs
again, as the kernel's do while recovery waits (bounded here by STOPPED_WAIT_LIMIT_S, so that
a test never hangs); a *gone* one makes them fail with ENOENT and drops that node's locks,
as leaving a lockspace does; quorum and a pending fence are only reported.
"""

from __future__ import annotations

import errno
import itertools
import threading
import time
from dataclasses import dataclass, field

from ..errors import BackendError, LockBusy, OrphanNotFound
from .base import (
    EMPTY_LVB,
    LOCKSPACE_GONE,
    LOCKSPACE_OK,
    LOCKSPACE_STATES,
    LOCKSPACE_STOPPED,
    LVB_BYTES,
    MAX_RESOURCE_NAME_BYTES,
    HealthReading,
    LockFlags,
    Mode,
    compatible,
)
from .base import lvb_writes as _lvb_writes

_NEW_LOCK_FLAGS = LockFlags.NOQUEUE | LockFlags.VALBLK | LockFlags.PERSISTENT | LockFlags.EXPEDITE
_CONVERT_FLAGS = _NEW_LOCK_FLAGS | LockFlags.CONVERT
_ADOPT_FLAGS = LockFlags.ORPHAN | LockFlags.PERSISTENT | LockFlags.NOQUEUE | LockFlags.VALBLK
STOPPED_WAIT_LIMIT_S = 300.0  # the kernel waits for ever; the model gives up after this


@dataclass
class _Lock:
    lkid: int
    resource: str
    node_id: int
    session: int | None  # None = orphan
    mode: Mode
    persistent: bool


@dataclass
class _Resource:
    lvb: bytes = EMPTY_LVB
    locks: dict[int, _Lock] = field(default_factory=dict)


@dataclass
class _NodeHealth:
    """One node's lock health as a test set it; times are wall clock (time.time())."""

    lockspace: str = LOCKSPACE_OK
    lockspace_since: float | None = None
    quorate: bool | None = True
    quorum_since: float | None = None
    fencing_node: int | None = None
    fencing_since: float | None = None


class ModelDlm:
    """One lockspace of a modelled DLM, shared by any number of sessions (thread-safe)."""

    def __init__(self, lockspace: str = "libvirt") -> None:
        self.lockspace = lockspace
        self._mutex = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._locks: dict[int, _Lock] = {}
        self._lkids = itertools.count(1)
        self._sessions = itertools.count(1)
        self._open: dict[int, int] = {}  # open session -> the node it plays
        self._health: dict[int, _NodeHealth] = {}  # node id -> health; absent = healthy
        self._running = threading.Condition(self._mutex)  # notified when health changes

    def session(self, node_id: int = 1) -> ModelBackend:
        with self._mutex:
            sid = next(self._sessions)
            self._open[sid] = node_id
        return ModelBackend(self, sid, node_id)

    # -- lock health, set by tests ----------------------------------------------------

    def set_health(
        self,
        node_id: int,
        lockspace: str = LOCKSPACE_OK,
        quorate: bool | None = True,
        fencing_node: int | None = None,
    ) -> None:
        """Set how node `node_id` sees the lockspace (a test's fault). Going *gone* drops the
        node's locks (sessions' and orphans'); leaving *stopped* wakes its blocked calls."""
        if lockspace not in LOCKSPACE_STATES:
            raise ValueError(f"lockspace state {lockspace!r} is not one of {LOCKSPACE_STATES}")
        now = time.time()
        with self._mutex:
            old = self._health.get(node_id, _NodeHealth())
            new = _NodeHealth(
                lockspace,
                old.lockspace_since if old.lockspace == lockspace else now,
                quorate,
                old.quorum_since if old.quorate == quorate else now,
                fencing_node,
                old.fencing_since if old.fencing_node == fencing_node else now,
            )
            self._health[node_id] = new
            if lockspace == LOCKSPACE_GONE:
                for lk in [lk for lk in self._locks.values() if lk.node_id == node_id]:
                    self._drop(lk)
            self._running.notify_all()

    def health(self, node_id: int) -> HealthReading:
        """What node `node_id`'s health probe reads; never waits on a lock call."""
        with self._mutex:
            h = self._health.get(node_id, _NodeHealth())
        fencing = "" if h.fencing_node is None else f"waiting for fencing of node {h.fencing_node}"
        return HealthReading(
            lockspace=h.lockspace,
            lockspace_detail={
                LOCKSPACE_STOPPED: "the model lockspace is stopped (as when dlm_controld dies)",
                LOCKSPACE_GONE: "the model lockspace is gone (this node left it)",
            }.get(h.lockspace, ""),
            lockspace_since=None if h.lockspace == LOCKSPACE_OK else h.lockspace_since,
            quorate=h.quorate,
            quorum_detail="model quorum" if h.quorate is not None else "model quorum unknown",
            fencing=fencing,
            fencing_since=h.fencing_since if fencing else None,
        )

    # -- primitives, called by ModelBackend -------------------------------------------

    def _check_session(self, sid: int, node_id: int | None = None) -> None:
        """The session is open, and (with node_id) that node's lockspace takes calls: wait
        while it is stopped, fail with ENOENT once it is gone. The caller holds _mutex."""
        if sid not in self._open:
            raise BackendError(f"{self.lockspace}: model session {sid} is closed", errno.EBADF)
        if node_id is None:
            return
        deadline = time.monotonic() + STOPPED_WAIT_LIMIT_S
        while (state := self._health.get(node_id, _NodeHealth()).lockspace) != LOCKSPACE_OK:
            if state == LOCKSPACE_GONE:
                raise BackendError(
                    f"{self.lockspace}: node {node_id} has left the lockspace", errno.ENOENT
                )
            left = deadline - time.monotonic()
            if left <= 0 or not self._running.wait(left):
                raise BackendError(
                    f"{self.lockspace}: the lockspace of node {node_id} stayed stopped for "
                    f"{STOPPED_WAIT_LIMIT_S:g} s (the model's bound on a blocked call)",
                    errno.ETIMEDOUT,
                )
            if sid not in self._open:
                raise BackendError(f"{self.lockspace}: model session {sid} is closed", errno.EBADF)

    def _conflicts(self, res: _Resource, mode: Mode, skip: int | None) -> bool:
        return any(not compatible(lk.mode, mode) for lk in res.locks.values() if lk.lkid != skip)

    @staticmethod
    def _check_lvb(lvb: bytes | None) -> None:
        if lvb is not None and len(lvb) != LVB_BYTES:
            raise BackendError(f"LVB must be {LVB_BYTES} bytes, got {len(lvb)}", errno.EINVAL)

    def lock(
        self, sid: int, node_id: int, name: str, mode: Mode, flags: LockFlags, lvb: bytes | None
    ) -> tuple[int, bytes | None]:
        if flags & ~_NEW_LOCK_FLAGS:
            raise BackendError(f"{name}: unsupported lock flags {flags!r}", errno.EINVAL)
        if not name or len(name.encode()) > MAX_RESOURCE_NAME_BYTES:
            raise BackendError(f"resource name {name!r} is not 1..64 bytes", errno.EINVAL)
        self._check_lvb(lvb)
        with self._mutex:
            self._check_session(sid, node_id)
            res = self._resources.get(name) or _Resource()
            if self._conflicts(res, mode, None):
                if flags & LockFlags.NOQUEUE:
                    raise LockBusy(f"{self.lockspace}:{name} lock {mode.name}")
                raise BackendError(
                    f"{name}: the model does not queue requests; use NOQUEUE", errno.EINVAL
                )
            lk = _Lock(
                next(self._lkids), name, node_id, sid, mode, bool(flags & LockFlags.PERSISTENT)
            )
            res.locks[lk.lkid] = lk
            self._resources[name] = res
            self._locks[lk.lkid] = lk
            return lk.lkid, (res.lvb if flags & LockFlags.VALBLK else None)

    def _own(self, sid: int, lkid: int) -> _Lock:
        self._check_session(sid, self._open.get(sid))
        lk = self._locks.get(lkid)
        if lk is None or lk.session != sid:
            raise BackendError(f"lock id {lkid} is not held by this session", errno.EINVAL)
        return lk

    def convert(
        self, sid: int, lkid: int, mode: Mode, flags: LockFlags, lvb: bytes | None
    ) -> bytes | None:
        if flags & ~_CONVERT_FLAGS:
            raise BackendError(f"lock id {lkid}: unsupported convert flags {flags!r}", errno.EINVAL)
        self._check_lvb(lvb)
        with self._mutex:
            lk = self._own(sid, lkid)
            res = self._resources[lk.resource]
            if self._conflicts(res, mode, lkid):
                if flags & LockFlags.NOQUEUE:
                    raise LockBusy(
                        f"{self.lockspace}:{lk.resource} convert {lk.mode.name}->{mode.name}"
                    )
                raise BackendError(
                    f"{lk.resource}: the model does not queue converts; use NOQUEUE", errno.EINVAL
                )
            out = None
            if flags & LockFlags.VALBLK:
                if _lvb_writes(lk.mode, mode):
                    res.lvb = lvb if lvb is not None else EMPTY_LVB
                else:
                    out = res.lvb
            lk.mode = mode
            lk.persistent = bool(flags & LockFlags.PERSISTENT)
            return out

    def unlock(self, sid: int, lkid: int) -> None:
        with self._mutex:
            lk = self._own(sid, lkid)
            self._drop(lk)

    def _drop(self, lk: _Lock) -> None:
        res = self._resources[lk.resource]
        del res.locks[lk.lkid]
        del self._locks[lk.lkid]
        if not res.locks:
            del self._resources[lk.resource]

    def adopt(self, sid: int, node_id: int, name: str, mode: Mode, flags: LockFlags) -> int:
        if flags & ~_ADOPT_FLAGS or not flags & LockFlags.ORPHAN:
            raise BackendError(f"{name}: adopt needs ORPHAN, got {flags!r}", errno.EINVAL)
        with self._mutex:
            self._check_session(sid, node_id)
            res = self._resources.get(name)
            orphans = [
                lk
                for lk in (res.locks.values() if res else ())
                if lk.session is None and lk.node_id == node_id
            ]
            if not orphans:
                raise OrphanNotFound(f"{self.lockspace}:{name} adopt {mode.name}")
            match = next((lk for lk in orphans if lk.mode == mode), None)
            if match is None:
                raise LockBusy(f"{self.lockspace}:{name} adopt {mode.name}: orphan in another mode")
            match.session = sid
            match.persistent = bool(flags & LockFlags.PERSISTENT)
            return match.lkid

    def purge(self, sid: int, node_id: int) -> int:
        with self._mutex:
            self._check_session(sid, node_id)
            orphans = [
                lk for lk in self._locks.values() if lk.session is None and lk.node_id == node_id
            ]
            for lk in orphans:
                self._drop(lk)
            return len(orphans)

    def close_session(self, sid: int) -> None:
        """The process exits: persistent locks become orphans, the rest are dropped."""
        with self._mutex:
            if sid not in self._open:
                return
            del self._open[sid]
            self._running.notify_all()  # its calls waiting on a stopped lockspace give up
            for lk in [lk for lk in self._locks.values() if lk.session == sid]:
                if lk.persistent:
                    lk.session = None
                else:
                    self._drop(lk)

    def snapshot(self) -> list[tuple[str, int, int, str, bool]]:
        """(resource, lkid, node, mode, orphan) for every lock; for tests and debugging."""
        with self._mutex:
            return [
                (lk.resource, lk.lkid, lk.node_id, lk.mode.name, lk.session is None)
                for lk in self._locks.values()
            ]


class ModelHealthProbe:
    """HealthProbe of one node of a ModelDlm: reads what a test set (ModelDlm.set_health)."""

    def __init__(self, dlm: ModelDlm, node_id: int) -> None:
        self._dlm = dlm
        self._node_id = node_id

    def read(self) -> HealthReading:
        return self._dlm.health(self._node_id)

    def close(self) -> None:
        pass


class ModelBackend:
    """LockBackend over a ModelDlm: one session, i.e. one process on one node."""

    name = "model"
    cluster = False
    blocking = True  # a call on a stopped lockspace waits, as the kernel's does

    def __init__(self, dlm: ModelDlm, sid: int, node_id: int) -> None:
        self._dlm = dlm
        self._sid = sid
        self.node_id = node_id
        self.lockspace = dlm.lockspace

    def lock(
        self, resource: str, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> tuple[int, bytes | None]:
        return self._dlm.lock(self._sid, self.node_id, resource, mode, flags, lvb)

    def convert(
        self, lkid: int, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> bytes | None:
        return self._dlm.convert(self._sid, lkid, mode, flags | LockFlags.CONVERT, lvb)

    def unlock(self, lkid: int) -> None:
        self._dlm.unlock(self._sid, lkid)

    def adopt(self, resource: str, mode: Mode, flags: LockFlags) -> int:
        return self._dlm.adopt(self._sid, self.node_id, resource, mode, flags | LockFlags.ORPHAN)

    def purge(self) -> None:
        self._dlm.purge(self._sid, self.node_id)

    def close(self) -> None:
        self._dlm.close_session(self._sid)

    def health_probe(self) -> ModelHealthProbe:
        return ModelHealthProbe(self._dlm, self.node_id)
