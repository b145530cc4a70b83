"""The lock decisions: which owner holds which resource, in which mode, taken how.

``Locker`` runs on the daemon's one worker thread and is the only caller of the backend.
Taking a lock follows lvmlockd: a new NL lock, then CONVERT|NOQUEUE|PERSISTENT to PR or EX;
an EX holder then publishes itself in the lock value block (an EX->EX convert with VALBLK
writes it), so that a refused node can name the holder. Releasing converts to NL (clearing
the LVB of an EX lock) and unlocks. An acquire is all or nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .backends.base import EMPTY_LVB, LockBackend, LockFlags, Mode, decode_holder, encode_holder
from .errors import BackendError, Busy, Holder, LockBusy, OrphanNotFound
from .owners import HeldLock, Owner

log = logging.getLogger(__name__)

TAKE_FLAGS = LockFlags.NOQUEUE | LockFlags.PERSISTENT
PUBLISH_FLAGS = LockFlags.NOQUEUE | LockFlags.PERSISTENT | LockFlags.VALBLK


@dataclass(frozen=True)
class Want:
    """One lock an owner asks for."""

    resource: str
    kind: str
    label: str
    mode: Mode


class Locker:
    def __init__(self, backend: LockBackend, node_name: str) -> None:
        self.backend = backend
        self.node_name = node_name
        self.ls = backend.lockspace
        self.holders: dict[str, dict[tuple[str, int], Owner]] = {}  # resource -> local owners

    # -- bookkeeping of local holders ---------------------------------------------------

    def _note(self, owner: Owner, held: HeldLock) -> None:
        owner.locks[held.resource] = held
        self.holders.setdefault(held.resource, {})[owner.key] = owner

    def _unnote(self, owner: Owner, resource: str) -> None:
        owner.locks.pop(resource, None)
        local = self.holders.get(resource)
        if local is not None:
            local.pop(owner.key, None)
            if not local:
                del self.holders[resource]

    def lock_count(self) -> int:
        return sum(len(v) for v in self.holders.values())

    # -- acquire ------------------------------------------------------------------------

    def acquire(self, owner: Owner, wants: list[Want]) -> list[HeldLock]:
        """Take every wanted lock the owner lacks, or none of them; returns the new ones."""
        taken: list[HeldLock] = []
        changed: list[tuple[HeldLock, Mode]] = []
        try:
            for want in wants:
                held = owner.locks.get(want.resource)
                if held is None:
                    new = self._take(owner, want)
                    self._note(owner, new)
                    taken.append(new)
                elif held.mode != want.mode:
                    old = held.mode
                    self._convert(owner, held, want.mode, want.label)
                    changed.append((held, old))
        except BaseException:
            for held in taken:
                self._release_one(owner, held)
                self._unnote(owner, held.resource)
            for held, old in changed:
                self._convert(owner, held, old, held.label)
            raise
        return taken

    def _take(self, owner: Owner, want: Want) -> HeldLock:
        lkid, _ = self.backend.lock(want.resource, Mode.NL, LockFlags.EXPEDITE)
        try:
            self.backend.convert(lkid, want.mode, TAKE_FLAGS)
        except LockBusy as err:
            holder = self._holder_of(owner, want, lkid)
            self.backend.unlock(lkid)
            log.info(
                "%s:%s acquire %s for %s: refused, %s (%s)",
                self.ls,
                want.resource,
                want.mode.name,
                owner.describe(),
                holder.describe() if holder else "holder unknown",
                want.label,
            )
            raise Busy(want.kind, want.label, holder) from err
        except BaseException:
            self.backend.unlock(lkid)
            raise
        held = HeldLock(want.resource, want.kind, want.label, want.mode, lkid)
        if want.mode == Mode.EX:
            self._publish(owner, held)
        log.info(
            "%s:%s acquire %s for %s: granted (%s)",
            self.ls,
            want.resource,
            want.mode.name,
            owner.describe(),
            want.label,
        )
        return held

    def _convert(self, owner: Owner, held: HeldLock, mode: Mode, label: str) -> None:
        if held.mode == Mode.EX:
            self.backend.convert(held.lkid, held.mode, PUBLISH_FLAGS, EMPTY_LVB)
        try:
            self.backend.convert(held.lkid, mode, TAKE_FLAGS)
        except LockBusy as err:
            holder = self._holder_of(owner, Want(held.resource, held.kind, label, mode), None)
            raise Busy(held.kind, label, holder) from err
        held.mode = mode
        if mode == Mode.EX:
            self._publish(owner, held)
        log.info(
            "%s:%s convert to %s for %s: granted (%s)",
            self.ls,
            held.resource,
            mode.name,
            owner.describe(),
            label,
        )

    def _publish(self, owner: Owner, held: HeldLock) -> None:
        lvb = encode_holder(held.mode, self.backend.node_id, self.node_name, owner.name)
        self.backend.convert(held.lkid, held.mode, PUBLISH_FLAGS, lvb)

    def _holder_of(self, owner: Owner, want: Want, lkid: int | None) -> Holder | None:
        """Who blocks `want`: a local owner if one holds it, else the LVB's holder."""
        for other in self.holders.get(want.resource, {}).values():
            if other.key == owner.key:
                continue
            held = other.locks[want.resource]
            return Holder(other.name, self.node_name, held.mode.name)
        if lkid is None:
            return None
        try:
            lvb = self.backend.convert(lkid, Mode.NL, LockFlags.VALBLK)
        except BackendError as err:
            log.debug("%s:%s read LVB: %s", self.ls, want.resource, err)
            return None
        found = decode_holder(lvb)
        if found is None:
            return Holder("", "", "PR" if want.mode == Mode.EX else "EX")
        mode, _node_id, node, domain = found
        return Holder(domain, node, mode.name)

    # -- release ------------------------------------------------------------------------

    def release(self, owner: Owner, resources: list[str] | None) -> int:
        """Release the named resources (None: all); returns how many were held."""
        names = list(owner.locks) if resources is None else resources
        count = 0
        for resource in names:
            held = owner.locks.get(resource)
            if held is None:
                continue
            self._release_one(owner, held)
            self._unnote(owner, resource)
            count += 1
        return count

    def _release_one(self, owner: Owner, held: HeldLock) -> None:
        try:
            if held.mode == Mode.EX:
                self.backend.convert(held.lkid, Mode.NL, LockFlags.VALBLK, EMPTY_LVB)
            else:
                self.backend.convert(held.lkid, Mode.NL, LockFlags.NONE)
            self.backend.unlock(held.lkid)
        except BackendError as err:
            log.error(
                "%s:%s release %s for %s failed: %s; the lock may stay granted until "
                "virtdlmd restarts and purges it",
                self.ls,
                held.resource,
                held.mode.name,
                owner.describe(),
                err,
            )
            return
        log.info(
            "%s:%s release %s for %s (%s)",
            self.ls,
            held.resource,
            held.mode.name,
            owner.describe(),
            held.label,
        )

    # -- restart ------------------------------------------------------------------------

    def adopt(self, owner: Owner) -> list[str]:
        """Adopt the orphans of a recorded owner whose QEMU still runs; returns losses."""
        lost = []
        for resource, held in list(owner.locks.items()):
            try:
                held.lkid = self.backend.adopt(resource, held.mode, LockFlags.PERSISTENT)
            except (OrphanNotFound, LockBusy) as err:
                log.error(
                    "%s:%s adopt %s for %s: %s; the lock is no longer held",
                    self.ls,
                    resource,
                    held.mode.name,
                    owner.describe(),
                    err,
                )
                owner.locks.pop(resource)
                lost.append(held.label)
                continue
            self._note(owner, held)
            log.info(
                "%s:%s adopt %s for %s (%s)",
                self.ls,
                resource,
                held.mode.name,
                owner.describe(),
                held.label,
            )
        return lost

    def purge(self) -> None:
        self.backend.purge()
        log.info("%s: purged the orphans of owners that are gone", self.ls)
