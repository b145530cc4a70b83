"""The libdlm backend: the kernel DLM through libdlm_lt.so.3 (cffi, ABI mode).

All cffi lives in this module; nothing but bytes, ints and errors.BackendError leave it.
Every call for a lockspace must come from one thread (the daemon's worker thread): the
non-threaded libdlm_lt delivers completions by reading the lockspace fd inside the
``*_wait`` calls, and errno must be read right after a call on the same thread.
Pattern after lvm2's lvmlockd (daemons/lvmlockd/lvmlockd-dlm.c).
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import time
from typing import Any

from ..errors import BackendError, BackendUnavailable, LockBusy, OrphanNotFound
from .base import LVB_BYTES, MAX_RESOURCE_NAME_BYTES, LockFlags, Mode
from .dlm_health import DlmHealthProbe

log = logging.getLogger(__name__)

LIBRARY = "libdlm_lt.so.3"
DLM_CONTROL_DEVICE = "/dev/misc/dlm-control"
CONFIGFS_COMMS = "/sys/kernel/config/dlm/cluster/comms"
LOCKSPACE_MODE = 0o600
DLM_LSFL_NEWEXCL = 0x8
EUNLOCK = 0x10002

_CDEF = """
typedef void *dlm_lshandle_t;
struct dlm_lksb { int sb_status; uint32_t sb_lkid; char sb_flags; char *sb_lvbptr; };
dlm_lshandle_t dlm_open_lockspace(const char *name);
dlm_lshandle_t dlm_new_lockspace(const char *name, unsigned int mode, uint32_t flags);
int dlm_close_lockspace(dlm_lshandle_t ls);
int dlm_ls_lock_wait(dlm_lshandle_t ls, uint32_t mode, struct dlm_lksb *lksb, uint32_t flags,
                     const void *name, unsigned int namelen, uint32_t parent, void *bastarg,
                     void (*bastaddr)(void *), void *range);
int dlm_ls_lockx(dlm_lshandle_t ls, uint32_t mode, struct dlm_lksb *lksb, uint32_t flags,
                 const void *name, unsigned int namelen, uint32_t parent,
                 void (*astaddr)(void *), void *astarg, void (*bastaddr)(void *),
                 uint64_t *xid, uint64_t *timeout);
int dlm_ls_unlock_wait(dlm_lshandle_t ls, uint32_t lkid, uint32_t flags, struct dlm_lksb *lksb);
int dlm_ls_purge(dlm_lshandle_t ls, int nodeid, int pid);
"""


def local_node_id(comms_dir: str = CONFIGFS_COMMS) -> int:
    """This node's DLM node id, from dlm_controld's configfs entries (0 when unknown)."""
    for comm in glob.glob(os.path.join(comms_dir, "*")):
        try:
            with open(os.path.join(comm, "local"), encoding="ascii") as f:
                if f.read().strip() != "1":
                    continue
            with open(os.path.join(comm, "nodeid"), encoding="ascii") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    return 0


class LibDlmBackend:
    """LockBackend on a kernel DLM lockspace. Construct it on the worker thread."""

    name = "libdlm"
    cluster = True
    blocking = True

    def __init__(self, lockspace: str) -> None:
        try:
            import cffi
        except ImportError as err:
            raise BackendUnavailable("the libdlm backend needs cffi: pip install cffi") from err
        self.lockspace = lockspace
        self._ffi = cffi.FFI()
        self._ffi.cdef(_CDEF)
        try:
            self._lib: Any = self._ffi.dlopen(LIBRARY)
        except OSError as err:
            raise BackendUnavailable(
                f"cannot load {LIBRARY}: {err}; install libdlm3 (apt-get install libdlm3)"
            ) from err
        if not os.path.exists(DLM_CONTROL_DEVICE):
            raise BackendUnavailable(
                f"{DLM_CONTROL_DEVICE} is missing: the dlm kernel module is not loaded or "
                "dlm_controld is not running (systemctl start dlm; needs corosync)",
                errno.ENODEV,
            )
        self._ls = self._open_lockspace(lockspace)
        self.node_id = local_node_id()
        # A real, no-op completion callback for dlm_ls_lockx (adoption): ORPHAN requests
        # cannot use dlm_ls_lock_wait, and a NULL AST would never complete.
        self._noop_ast = self._ffi.callback("void(void *)", lambda _arg: None)
        self._lksbs: dict[
            int, tuple[Any, Any]
        ] = {}  # lkid -> (lksb, lvb buffer); kept alive while held

    def _open_lockspace(self, name: str) -> Any:
        cname = name.encode()
        ls = self._lib.dlm_open_lockspace(cname)
        if ls != self._ffi.NULL:
            log.info("%s: opened existing lockspace", name)
            return ls
        started = time.monotonic()
        ls = self._lib.dlm_new_lockspace(cname, LOCKSPACE_MODE, DLM_LSFL_NEWEXCL)
        err = self._ffi.errno
        if ls == self._ffi.NULL and err == errno.EEXIST:
            ls = self._lib.dlm_open_lockspace(cname)
            err = self._ffi.errno
        if ls == self._ffi.NULL:
            hint = {
                errno.EUNATCH: "dlm_controld is not running (systemctl start dlm)",
                errno.EPERM: "creating a lockspace needs CAP_SYS_ADMIN (run virtdlmd as root)",
                errno.EACCES: "creating a lockspace needs CAP_SYS_ADMIN (run virtdlmd as root)",
                0: "the dlm kernel module is not loaded (modprobe dlm)",
            }.get(err, "see dlm_tool status and the dlm_controld journal")
            raise BackendUnavailable(f"{name}: cannot open or create the lockspace; {hint}", err)
        log.info("%s: joined lockspace in %.3f s", name, time.monotonic() - started)
        return ls

    def _new_lksb(self, lvb: bytes | None) -> tuple[Any, Any]:
        lksb: Any = self._ffi.new("struct dlm_lksb *")
        buf = self._ffi.new("char[]", LVB_BYTES)
        if lvb is not None:
            self._ffi.memmove(buf, lvb, LVB_BYTES)
        lksb.sb_lvbptr = buf
        return lksb, buf

    def _held(self, lkid: int) -> tuple[Any, Any]:
        held = self._lksbs.get(lkid)
        if held is None:
            raise BackendError(f"{self.lockspace}: lock id {lkid:x} is not held", errno.EINVAL)
        return held

    def _fail(self, what: str, err: int) -> BackendError:
        if err == errno.EAGAIN:
            return LockBusy(f"{self.lockspace}:{what}")
        if err == errno.ENOENT:
            return OrphanNotFound(f"{self.lockspace}:{what}")
        return BackendError(f"{self.lockspace}:{what}", err)

    def _check_name(self, resource: str) -> bytes:
        raw = resource.encode()
        if not raw or len(raw) > MAX_RESOURCE_NAME_BYTES:
            raise BackendError(f"resource name {resource!r} is not 1..64 bytes", errno.EINVAL)
        return raw

    def _result(self, what: str, rv: int, lksb: Any) -> None:
        """Turn a *_wait return value and the lksb status into success or an error."""
        err = self._ffi.errno if rv != 0 else 0
        status = int(lksb.sb_status)
        if rv != 0:
            raise self._fail(what, err or errno.EIO)
        if status not in (0, EUNLOCK):
            raise self._fail(what, status if status > 0 else -status)

    def lock(
        self, resource: str, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> tuple[int, bytes | None]:
        raw = self._check_name(resource)
        lksb, buf = self._new_lksb(lvb)
        started = time.monotonic()
        rv = self._lib.dlm_ls_lock_wait(
            self._ls,
            int(mode),
            lksb,
            int(flags),
            raw,
            len(raw),
            0,
            self._ffi.NULL,
            self._ffi.NULL,
            self._ffi.NULL,
        )
        self._result(f"{resource} lock {mode.name}", rv, lksb)
        lkid = int(lksb.sb_lkid)
        self._lksbs[lkid] = (lksb, buf)
        log.debug(
            "%s:%s lock %s lkid %x in %.6f s",
            self.lockspace,
            resource,
            mode.name,
            lkid,
            time.monotonic() - started,
        )
        return lkid, (bytes(self._ffi.buffer(buf, LVB_BYTES)) if flags & LockFlags.VALBLK else None)

    def convert(
        self, lkid: int, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> bytes | None:
        lksb, buf = self._held(lkid)
        if lvb is not None:
            self._ffi.memmove(buf, lvb, LVB_BYTES)
        started = time.monotonic()
        rv = self._lib.dlm_ls_lock_wait(
            self._ls,
            int(mode),
            lksb,
            int(flags | LockFlags.CONVERT),
            self._ffi.NULL,
            0,
            0,
            self._ffi.NULL,
            self._ffi.NULL,
            self._ffi.NULL,
        )
        self._result(f"lkid {lkid:x} convert {mode.name}", rv, lksb)
        log.debug(
            "%s: lkid %x convert %s in %.6f s",
            self.lockspace,
            lkid,
            mode.name,
            time.monotonic() - started,
        )
        return bytes(self._ffi.buffer(buf, LVB_BYTES)) if flags & LockFlags.VALBLK else None

    def unlock(self, lkid: int) -> None:
        lksb, _buf = self._held(lkid)
        rv = self._lib.dlm_ls_unlock_wait(self._ls, lkid, 0, lksb)
        self._result(f"lkid {lkid:x} unlock", rv, lksb)
        del self._lksbs[lkid]

    def adopt(self, resource: str, mode: Mode, flags: LockFlags) -> int:
        raw = self._check_name(resource)
        lksb, buf = self._new_lksb(None)
        rv = self._lib.dlm_ls_lockx(
            self._ls,
            int(mode),
            lksb,
            int(flags | LockFlags.ORPHAN | LockFlags.PERSISTENT),
            raw,
            len(raw),
            0,
            self._noop_ast,
            self._ffi.NULL,
            self._ffi.NULL,
            self._ffi.NULL,
            self._ffi.NULL,
        )
        if rv != 0:
            raise self._fail(f"{resource} adopt {mode.name}", self._ffi.errno or errno.EIO)
        lkid = int(lksb.sb_lkid)
        self._lksbs[lkid] = (lksb, buf)
        # A same-mode synchronous convert settles the adopted lock and drains its AST.
        self.convert(lkid, mode, LockFlags.NOQUEUE | LockFlags.PERSISTENT)
        return lkid

    def purge(self) -> None:
        if self._lib.dlm_ls_purge(self._ls, 0, 0) != 0:
            raise self._fail("purge orphans", self._ffi.errno or errno.EIO)

    def close(self) -> None:
        if self._ls is not None:
            self._lib.dlm_close_lockspace(self._ls)
            self._ls = None

    def health_probe(self) -> DlmHealthProbe:
        """Lockspace, dlm_controld, fencing and quorum, read without any DLM call
        (virtdlm.backends.dlm_health)."""
        return DlmHealthProbe(self.lockspace)
