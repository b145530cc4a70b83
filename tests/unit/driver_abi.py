"""libvirt's lock-driver plugin ABI in ctypes, and a handle that drives dlm.so like libvirt.

The ABI is declared in libvirt's src/locking/lock_driver.h (internal to libvirt; not installed
by libvirt-dev). Layout on x86_64: a parameter is 32 bytes, the manager 16, the driver table 72.
`DriverHandle` loads the plugin in this process and makes the calls libvirt makes: init, then
per operation new + add_* + acquire/release/inquire + free. test_driver_drift.py checks these
numbers against plugin/driver/dlm_driver.h.
"""

from __future__ import annotations

import ctypes
import os
import uuid as uuid_mod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LOCK_MANAGER_VERSION = 1_000_000
DRIVER_SYMBOL = "virLockDriverImpl"

OBJECT_TYPE_DOMAIN = 0
NEW_STARTED = 1
RESOURCE_TYPE_DISK = 0
RESOURCE_TYPE_LEASE = 1
RESOURCE_READONLY = 1
RESOURCE_SHARED = 2
ACQUIRE_REGISTER_ONLY = 1
ACQUIRE_RESTRICT = 2
# virDomainLockFailureAction (libvirt's conf), the drvAcquire `action`, in libvirt's order
ACTION_DEFAULT = 0
ACTION_POWEROFF = 1
ACTION_RESTART = 2
ACTION_PAUSE = 3
ACTION_IGNORE = 4

PARAM_STRING = 0
PARAM_CSTRING = 1
PARAM_INT = 2
PARAM_LONG = 3
PARAM_UINT = 4
PARAM_ULONG = 5
PARAM_DOUBLE = 6
PARAM_UUID = 7

PARAM_BYTES = 32
MANAGER_BYTES = 16
DRIVER_BYTES = 72
UNSET_STATE = 0xDEAD  # preset in *state: the driver must overwrite it (NULL or a string)


class ParamValue(ctypes.Union):
    _fields_ = [
        ("iv", ctypes.c_int),
        ("l", ctypes.c_longlong),
        ("ui", ctypes.c_uint),
        ("ul", ctypes.c_ulonglong),
        ("d", ctypes.c_double),
        ("str", ctypes.c_char_p),
        ("uuid", ctypes.c_ubyte * 16),
    ]


class Param(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("key", ctypes.c_char_p), ("value", ParamValue)]


class Manager(ctypes.Structure):
    _fields_ = [("driver", ctypes.c_void_p), ("privateData", ctypes.c_void_p)]


ParamArray = ctypes.POINTER(Param)
ManagerPtr = ctypes.POINTER(Manager)
InitFunc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_uint)
DeinitFunc = ctypes.CFUNCTYPE(ctypes.c_int)
NewFunc = ctypes.CFUNCTYPE(
    ctypes.c_int, ManagerPtr, ctypes.c_uint, ctypes.c_size_t, ParamArray, ctypes.c_uint
)
FreeFunc = ctypes.CFUNCTYPE(None, ManagerPtr)
AddResourceFunc = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ManagerPtr,
    ctypes.c_uint,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ParamArray,
    ctypes.c_uint,
)
AcquireFunc = ctypes.CFUNCTYPE(
    ctypes.c_int, ManagerPtr, ctypes.c_char_p, ctypes.c_uint, ctypes.c_int,
    ctypes.POINTER(ctypes.c_int),
)  # fmt: skip
# char **state: a c_void_p slot, so that the string can be freed with libc's free().
StateFunc = ctypes.CFUNCTYPE(
    ctypes.c_int, ManagerPtr, ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint
)

FUNCTION_SLOTS = (
    "drvInit",
    "drvDeinit",
    "drvNew",
    "drvFree",
    "drvAddResource",
    "drvAcquire",
    "drvRelease",
    "drvInquire",
)


class Driver(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("drvInit", InitFunc),
        ("drvDeinit", DeinitFunc),
        ("drvNew", NewFunc),
        ("drvFree", FreeFunc),
        ("drvAddResource", AddResourceFunc),
        ("drvAcquire", AcquireFunc),
        ("drvRelease", StateFunc),
        ("drvInquire", StateFunc),
    ]


assert ctypes.sizeof(Param) == PARAM_BYTES
assert ctypes.sizeof(Manager) == MANAGER_BYTES
assert ctypes.sizeof(Driver) == DRIVER_BYTES

_LIBC = ctypes.CDLL(None)
_LIBC.free.argtypes = [ctypes.c_void_p]
_LIBC.free.restype = None


@dataclass(frozen=True)
class ParamSpec:
    """One libvirt parameter before marshalling: key, PARAM_* type and Python value."""

    key: str
    type: int
    value: object


def owner_params(
    uuid: str, name: str, id: int, pid: int, uri: str | None = "qemu:///system"
) -> list[ParamSpec]:
    """The five parameters libvirt's drvNew always gets (id is libvirt's int, -1 inactive)."""
    return [
        ParamSpec("uuid", PARAM_UUID, uuid_mod.UUID(uuid).bytes),
        ParamSpec("name", PARAM_STRING, name),
        ParamSpec("id", PARAM_UINT, id & 0xFFFFFFFF),
        ParamSpec("pid", PARAM_UINT, pid),
        ParamSpec("uri", PARAM_CSTRING, uri),
    ]


def lease_params(path: str, offset: int, lockspace: str | None) -> list[ParamSpec]:
    """What libvirt passes with a <lease>; lockspace is left out when the XML has none."""
    specs = [ParamSpec("path", PARAM_STRING, path), ParamSpec("offset", PARAM_ULONG, offset)]
    if lockspace is not None:
        specs.append(ParamSpec("lockspace", PARAM_STRING, lockspace))
    return specs


class DriverHandle:
    """dlm.so loaded in this process, with one lock manager object as libvirt allocates it."""

    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        self.table = Driver.in_dll(self.lib, DRIVER_SYMBOL)
        self.manager = Manager(ctypes.addressof(self.table), None)
        self._keep: list[object] = []  # bytes the current parameters point into

    def _params(self, specs: Sequence[ParamSpec]) -> tuple[int, ctypes.Array[Param]]:
        array = (Param * max(len(specs), 1))()
        for slot, spec in zip(array, specs, strict=False):
            key = spec.key.encode()
            self._keep.append(key)
            slot.type, slot.key = spec.type, key
            if spec.type == PARAM_UUID:
                assert isinstance(spec.value, bytes)
                slot.value.uuid[:] = list(spec.value)
            elif spec.type in (PARAM_STRING, PARAM_CSTRING):
                raw = spec.value.encode() if isinstance(spec.value, str) else None
                self._keep.append(raw)
                slot.value.str = raw
            elif spec.type in (PARAM_UINT, PARAM_ULONG):
                assert isinstance(spec.value, int)
                slot.value.ul = spec.value
            else:
                raise ValueError(f"parameter type {spec.type} is not marshalled here")
        self._keep.append(array)
        return len(specs), array

    def init(self, config: str | None, version: int = LOCK_MANAGER_VERSION, flags: int = 0) -> int:
        return int(self.table.drvInit(version, config.encode() if config else None, flags))

    def deinit(self) -> int:
        return int(self.table.drvDeinit())

    def new(
        self,
        uuid: str,
        name: str,
        id: int,
        pid: int,
        flags: int = 0,
        params: Sequence[ParamSpec] | None = None,
        object_type: int = OBJECT_TYPE_DOMAIN,
    ) -> int:
        count, array = self._params(
            params if params is not None else owner_params(uuid, name, id, pid)
        )
        return int(self.table.drvNew(ctypes.byref(self.manager), object_type, count, array, flags))

    def add_resource(
        self, kind: int, name: str | None, params: Sequence[ParamSpec], flags: int
    ) -> int:
        count, array = self._params(params)
        raw = name.encode() if name is not None else None
        self._keep.append(raw)
        return int(
            self.table.drvAddResource(ctypes.byref(self.manager), kind, raw, count, array, flags)
        )

    def add_disk(
        self, path: str, readonly: bool = False, shared: bool = False, flags: int | None = None
    ) -> int:
        if flags is None:
            flags = (RESOURCE_READONLY if readonly else 0) | (RESOURCE_SHARED if shared else 0)
        return self.add_resource(RESOURCE_TYPE_DISK, path, [], flags)

    def add_lease(
        self, key: str, path: str, offset: int = 0, lockspace: str | None = "libvirt",
        flags: int = 0,
    ) -> int:  # fmt: skip
        return self.add_resource(
            RESOURCE_TYPE_LEASE, key, lease_params(path, offset, lockspace), flags
        )

    def acquire(
        self, flags: int = 0, state: str | None = None, action: int = ACTION_DEFAULT
    ) -> tuple[int, int]:
        """Returns (rc, fd); fd stays -1 unless REGISTER_ONLY hands over the socket."""
        fd = ctypes.c_int(-1)
        rc = self.table.drvAcquire(
            ctypes.byref(self.manager),
            state.encode() if state is not None else None,
            flags,
            action,
            ctypes.byref(fd),
        )
        return int(rc), fd.value

    def _state_call(self, func: Callable[..., int], flags: int) -> tuple[int, str | None]:
        slot = ctypes.c_void_p(UNSET_STATE)
        rc = func(ctypes.byref(self.manager), ctypes.byref(slot), flags)
        if slot.value == UNSET_STATE:
            raise AssertionError("the driver left *state unset (must be NULL or a string)")
        state = None
        if slot.value:
            state = ctypes.string_at(slot.value).decode()
            _LIBC.free(slot.value)
        return int(rc), state

    def release(self, flags: int = 0) -> tuple[int, str | None]:
        return self._state_call(self.table.drvRelease, flags)

    def inquire(self, flags: int = 0) -> tuple[int, str | None]:
        return self._state_call(self.table.drvInquire, flags)

    def free(self) -> None:
        self.table.drvFree(ctypes.byref(self.manager))
        self._keep.clear()

    @property
    def has_private_data(self) -> bool:
        return bool(self.manager.privateData)
