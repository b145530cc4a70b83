"""Owners (QEMU processes), the locks they hold, and the state file that outlives the daemon.

An owner is one QEMU process: domain uuid + pid + the pid's start time, so that a reused pid
never inherits locks. The state directory holds one small JSON file per owner
(``owners/<uuid>-<pid>.json``), rewritten atomically when that owner's locks change; the
cost of a change does not grow with the number of other owners.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Mode
from .errors import VirtDlmError

log = logging.getLogger(__name__)
STATE_VERSION = 1


def process_start_time(pid: int) -> int | None:
    """The pid's start time in clock ticks since boot (proc(5) field 22), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None  # a zombie has exited: its locks are free to go
    return int(fields[19])


def process_alive(pid: int, start_time: int) -> bool:
    return process_start_time(pid) == start_time


@dataclass
class HeldLock:
    resource: str  # the DLM resource name
    kind: str  # "disk" or "lease"
    label: str  # the disk path as libvirt gave it, or the lease's lockspace/key
    mode: Mode
    lkid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "kind": self.kind,
            "label": self.label,
            "mode": self.mode.name,
        }


@dataclass
class Owner:
    uuid: str
    name: str
    pid: int
    start_time: int
    locks: dict[str, HeldLock] = field(default_factory=dict)
    pidfd: int = -1
    registered: bool = False  # True while the registration connection is open
    gone: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.uuid, self.pid)

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid})"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "uuid": self.uuid,
            "name": self.name,
            "pid": self.pid,
            "start_time": self.start_time,
            "locks": [lk.to_json() for lk in self.locks.values()],
        }


def owner_from_json(data: dict[str, Any]) -> Owner:
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"state version {data.get('version')!r} is not {STATE_VERSION}")
    owner = Owner(str(data["uuid"]), str(data["name"]), int(data["pid"]), int(data["start_time"]))
    for raw in data["locks"]:
        lk = HeldLock(str(raw["resource"]), str(raw["kind"]), str(raw["label"]), Mode[raw["mode"]])
        owner.locks[lk.resource] = lk
    return owner


class StateStore:
    """One JSON file per owner under <state_dir>/owners, written atomically."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "owners")
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        except OSError as err:
            raise VirtDlmError(
                f"state directory {self.dir}: cannot create: {err.strerror}; "
                "set state_dir in the config to a writable directory"
            ) from err

    def _path(self, owner: Owner) -> str:
        return os.path.join(self.dir, f"{owner.uuid}-{owner.pid}.json")

    def save(self, owner: Owner) -> None:
        path = self._path(owner)
        if not owner.locks:
            self.forget(owner)
            return
        tmp = f"{path}.tmp"
        data = json.dumps(owner.to_json(), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def forget(self, owner: Owner) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(owner))

    def load(self) -> list[Owner]:
        """Every recorded owner; unreadable files are logged and set aside, not fatal."""
        owners = []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):
                os.unlink(path)
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    owners.append(owner_from_json(json.load(f)))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.error("state %s: unreadable (%s); moved aside to %s.bad", path, err, path)
                os.replace(path, f"{path}.bad")
        return owners
