"""Owners (QEMU processes), the record of one held lock, and the state that outlives the daemon.

An owner is one QEMU process: domain uuid + pid + the pid's start time, so that a reused pid
never inherits locks. What an owner holds is recorded once, by the locker
(``Locker.held_by``); a ``HeldLock`` names its owner. The state directory holds one small
JSON file per owner (``owners/<uuid>-<pid>.json``), rewritten atomically when that owner's
locks change; the cost of a change does not grow with the number of other owners. An owner
also carries its domain's on_lockfailure action (the last one libvirt gave); the state file
names it only when it is not the default, so files written before actions existed read and
write back byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .backends.base import Mode
from .errors import VirtDlmError
from .protocol import ACTIONS, DEFAULT_ACTION

log = logging.getLogger(__name__)
STATE_VERSION = 1

OwnerKey = tuple[str, int]  # (domain uuid, pid)


@dataclass
class Owner:
    uuid: str
    name: str
    pid: int
    start_time: int
    pidfd: int = -1
    registered: bool = False  # True while the registration connection is open
    gone: bool = False
    action: str = DEFAULT_ACTION  # on_lockfailure: the last one given wins (protocol.ACTIONS)

    @property
    def key(self) -> OwnerKey:
        return (self.uuid, self.pid)

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid})"


@dataclass
class HeldLock:
    """One lock one owner holds on one resource."""

    owner: Owner
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


class Recorded(NamedTuple):
    """An owner as the state directory recorded it, with the locks it held then."""

    owner: Owner
    locks: list[HeldLock]


def owner_to_json(owner: Owner, locks: Iterable[HeldLock]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": STATE_VERSION,
        "uuid": owner.uuid,
        "name": owner.name,
        "pid": owner.pid,
        "start_time": owner.start_time,
    }
    if owner.action != DEFAULT_ACTION:  # optional: older files have no such key
        data["action"] = owner.action
    data["locks"] = [lk.to_json() for lk in locks]
    return data


def owner_from_json(data: dict[str, Any]) -> Recorded:
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"state version {data.get('version')!r} is not {STATE_VERSION}")
    owner = Owner(str(data["uuid"]), str(data["name"]), int(data["pid"]), int(data["start_time"]))
    owner.action = str(data.get("action", DEFAULT_ACTION))
    if owner.action not in ACTIONS:
        raise ValueError(f"action {owner.action!r} is not one of {', '.join(ACTIONS)}")
    locks = {}
    for raw in data["locks"]:
        lk = HeldLock(
            owner, str(raw["resource"]), str(raw["kind"]), str(raw["label"]), Mode[raw["mode"]]
        )
        locks[lk.resource] = lk  # a resource recorded twice is held once
    return Recorded(owner, list(locks.values()))


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

    def save(self, owner: Owner, locks: Iterable[HeldLock]) -> None:
        """Record what the owner holds now; an owner holding nothing has no file."""
        held = list(locks)
        path = self._path(owner)
        if not held:
            self.forget(owner)
            return
        tmp = f"{path}.tmp"
        data = json.dumps(owner_to_json(owner, held), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def forget(self, owner: Owner) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(owner))

    def load(self) -> list[Recorded]:
        """Every recorded owner; unreadable files are logged and set aside, not fatal."""
        recorded = []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):
                os.unlink(path)
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    recorded.append(owner_from_json(json.load(f)))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.error("state %s: unreadable (%s); moved aside to %s.bad", path, err, path)
                os.replace(path, f"{path}.bad")
        return recorded
