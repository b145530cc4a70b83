"""The lock decisions, and the one record of which owner holds which resource in which mode.

``Locker`` runs on the daemon's one worker thread and is the only caller of the backend.
Taking a lock follows lvmlockd: a new NL lock, then CONVERT|NOQUEUE|PERSISTENT to PR or EX;
an EX holder then publishes itself in the lock value block (an EX->EX convert with VALBLK
writes it), so that a refused node can name the holder. Releasing converts to NL (clearing
the LVB of an EX lock) and unlocks. An acquire is all or nothing, and keeps nothing when it
ends after its request was answered or its owner is gone (a late grant is released at once).

The locker keeps the only record of what is held, one ``HeldLock`` per (owner, resource),
as lvmlockd keeps one record per lock. It is filed by owner, because the daemon's questions
are asked per owner (acquire, release, save its state) while "who else holds this
resource" is asked only on a refusal. Everyone else reads it through ``held_by`` and
``all_held``.

A release while this node's lockspace cannot take calls (virtdlm.health: stopped, gone, no
quorum, a pending fence) must not reach the DLM: the call would block the worker thread until
recovery, for ever on a stopped lockspace, and every later call behind it. So it is *stranded*
instead, on the event loop: the lock leaves its owner's record at once (the owner, its state
file, `locks` and `status` no longer count it) and waits in a list of pending releases, sent
to the DLM once the lockspace runs again (``release_stranded``), or dropped without a call
once it is gone (``drop_lost``: leaving a lockspace takes this node's locks with it). Since
the record is then changed from two threads, a mutex guards it, and readers get snapshots.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .backends.base import EMPTY_LVB, LockBackend, LockFlags, Mode, decode_holder, encode_holder
from .errors import BackendError, Busy, Holder, LockBusy, NoSuchProcess, OrphanNotFound
from .owners import HeldLock, Owner, OwnerKey
from .worker import Call

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
        self._mutex = threading.Lock()  # guards _held and _stranded (see the module's doc)
        self._held: dict[OwnerKey, dict[str, HeldLock]] = {}  # owner -> resource -> lock
        self._stranded: list[HeldLock] = []  # released while the lockspace took no calls

    # -- the record of what is held -----------------------------------------------------

    def held_by(self, owner: Owner) -> Mapping[str, HeldLock]:
        """What the owner holds, by resource: a read-only snapshot of the record."""
        with self._mutex:
            return MappingProxyType(dict(self._held.get(owner.key, {})))

    def all_held(self) -> list[HeldLock]:
        """Every lock held on this node, one record each (a snapshot)."""
        with self._mutex:
            return [held for locks in self._held.values() for held in locks.values()]

    def lock_count(self) -> int:
        with self._mutex:
            return sum(len(locks) for locks in self._held.values())

    @property
    def stranded_count(self) -> int:
        """Releases waiting for the lockspace to take calls again."""
        with self._mutex:
            return len(self._stranded)

    def _lock_of(self, owner: Owner, resource: str) -> HeldLock | None:
        with self._mutex:
            return self._held.get(owner.key, {}).get(resource)

    def _note(self, held: HeldLock) -> None:
        with self._mutex:
            self._held.setdefault(held.owner.key, {})[held.resource] = held

    def _unnote(self, held: HeldLock) -> None:
        with self._mutex:
            self._unnote_locked(held)

    def _unnote_locked(self, held: HeldLock) -> None:
        locks = self._held.get(held.owner.key)
        if locks is not None and locks.get(held.resource) is held:
            del locks[held.resource]
            if not locks:
                del self._held[held.owner.key]

    # -- acquire ------------------------------------------------------------------------

    def acquire(self, call: Call, owner: Owner, wants: list[Want]) -> list[HeldLock]:
        """Take every wanted lock the owner lacks, or none of them; returns the new ones.

        A revocable call (virtdlm.worker): new locks are recorded, and logged as granted,
        only once ``call`` commits. If the request was answered first (its deadline passed:
        ``call`` abandoned) or the owner is gone, the call keeps nothing: not begun, it is
        dropped; ended late, it releases what it got at once (and converts back what it
        converted), so that a late grant never outlives the moment it is seen.
        """
        if call.abandoned:
            log.warning(
                "%s: acquire for %s dropped: its request timed out before its turn came",
                self.ls,
                owner.describe(),
            )
            return []
        if owner.gone:
            raise NoSuchProcess(f"domain {owner.name}: pid {owner.pid} exited; nothing taken")
        taken: dict[str, HeldLock] = {}
        changed: list[tuple[HeldLock, Mode]] = []
        try:
            for want in wants:
                if call.abandoned or owner.gone:
                    break  # it will be given back: take no more
                held = taken.get(want.resource) or self._lock_of(owner, want.resource)
                if held is None:
                    taken[want.resource] = self._take(owner, want)
                elif held.mode != want.mode:
                    old = held.mode
                    self._convert(owner, held, want.mode, want.label)
                    changed.append((held, old))
        except BaseException:
            self._undo(owner, list(taken.values()), changed, None)
            raise
        if owner.gone or not call.commit():
            late = "its deadline" if call.abandoned else "its owner exited"
            self._undo(owner, list(taken.values()), changed, late)
            if call.abandoned:
                return []
            raise NoSuchProcess(
                f"domain {owner.name}: pid {owner.pid} exited while its acquire was pending; "
                "nothing is kept"
            )
        for held in taken.values():
            self._note(held)
            self._granted("acquire", held)
        for held, _old in changed:
            self._granted("convert to", held)
        return list(taken.values())

    def _granted(self, what: str, held: HeldLock) -> None:
        log.info(
            "%s:%s %s %s for %s: granted (%s)",
            self.ls,
            held.resource,
            what,
            held.mode.name,
            held.owner.describe(),
            held.label,
        )

    def _undo(
        self,
        owner: Owner,
        taken: list[HeldLock],
        changed: list[tuple[HeldLock, Mode]],
        late: str | None,
    ) -> None:
        """Give back what an acquire got: unlock its new locks, convert the others back.
        `late` says why a call that succeeded gives it back (logged once per resource);
        None for an acquire that failed (all or nothing)."""
        for held in taken:
            err = self._unlock(held)
            if err is not None:
                log.error(
                    "%s:%s acquire for %s: could not give the lock back: %s; it may stay "
                    "granted until virtdlmd restarts and purges it",
                    self.ls,
                    held.resource,
                    owner.describe(),
                    err,
                )
            elif late is not None:
                log.warning(
                    "%s:%s acquire completed after %s for %s: released (%s)",
                    self.ls,
                    held.resource,
                    late,
                    owner.describe(),
                    held.label,
                )
        for held, old in changed:
            new = held.mode
            try:
                self._convert(owner, held, old, held.label)
            except (BackendError, Busy) as err:
                log.error(
                    "%s:%s convert back to %s for %s failed: %s; it stays %s",
                    self.ls,
                    held.resource,
                    old.name,
                    owner.describe(),
                    err,
                    new.name,
                )
                continue
            if late is not None:
                log.warning(
                    "%s:%s convert to %s completed after %s for %s: back to %s (%s)",
                    self.ls,
                    held.resource,
                    new.name,
                    late,
                    owner.describe(),
                    old.name,
                    held.label,
                )

    def _take(self, owner: Owner, want: Want) -> HeldLock:
        """A new lock in the wanted mode, not recorded yet; Busy if someone else holds it."""
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
        held = HeldLock(owner, want.resource, want.kind, want.label, want.mode, lkid)
        if want.mode == Mode.EX:
            self._publish(owner, held)
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

    def _publish(self, owner: Owner, held: HeldLock) -> None:
        lvb = encode_holder(held.mode, self.backend.node_id, self.node_name, owner.name)
        self.backend.convert(held.lkid, held.mode, PUBLISH_FLAGS, lvb)

    def _holder_of(self, owner: Owner, want: Want, lkid: int | None) -> Holder | None:
        """Who blocks `want`: a local owner if one holds it, else the LVB's holder."""
        with self._mutex:
            owners = [(key, dict(locks)) for key, locks in self._held.items()]
        for key, locks in owners:
            other = locks.get(want.resource)
            if other is not None and key != owner.key:
                return Holder(other.owner.name, self.node_name, other.mode.name)
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
        names = list(self.held_by(owner)) if resources is None else resources
        count = 0
        for resource in names:
            held = self._lock_of(owner, resource)
            if held is None:
                continue
            self._release_one(held)
            self._unnote(held)
            count += 1
        return count

    # -- releases while the lockspace takes no calls --------------------------------------

    def strand(self, owner: Owner, resources: list[str] | None) -> int:
        """Release the named resources (None: all) without the DLM, which cannot take calls
        now: they leave the owner's record and wait for ``release_stranded``. Event loop."""
        with self._mutex:
            locks = self._held.get(owner.key, {})
            names = list(locks) if resources is None else resources
            moved = [locks[name] for name in names if name in locks]
            for held in moved:
                self._unnote_locked(held)
            self._stranded.extend(moved)
        for held in moved:
            log.warning(
                "%s:%s release %s for %s: the lockspace takes no calls now; sent once it "
                "runs again (%s)",
                self.ls,
                held.resource,
                held.mode.name,
                owner.describe(),
                held.label,
            )
        return len(moved)

    def release_stranded(self) -> int:
        """Send the stranded releases to the DLM, which takes calls again. Worker thread."""
        with self._mutex:
            stranded, self._stranded = self._stranded, []
        for held in stranded:
            self._release_one(held)
        return len(stranded)

    def drop_lost(self) -> int:
        """This node left the lockspace and its locks went with it: forget every record and
        every stranded release, without a DLM call (their lock ids are no more)."""
        with self._mutex:
            dropped = self._stranded + [h for locks in self._held.values() for h in locks.values()]
            self._held.clear()
            self._stranded = []
        for held in dropped:
            log.warning(
                "%s:%s %s for %s is lost with the lockspace; its record is dropped (%s)",
                self.ls,
                held.resource,
                held.mode.name,
                held.owner.describe(),
                held.label,
            )
        return len(dropped)

    def _unlock(self, held: HeldLock) -> BackendError | None:
        """Convert to NL (clearing the LVB of an EX lock) and unlock; the error, if any."""
        try:
            if held.mode == Mode.EX:
                self.backend.convert(held.lkid, Mode.NL, LockFlags.VALBLK, EMPTY_LVB)
            else:
                self.backend.convert(held.lkid, Mode.NL, LockFlags.NONE)
            self.backend.unlock(held.lkid)
        except BackendError as err:
            return err
        return None

    def _release_one(self, held: HeldLock) -> None:
        err = self._unlock(held)
        if err is not None:
            log.error(
                "%s:%s release %s for %s failed: %s; the lock may stay granted until "
                "virtdlmd restarts and purges it",
                self.ls,
                held.resource,
                held.mode.name,
                held.owner.describe(),
                err,
            )
            return
        log.info(
            "%s:%s release %s for %s (%s)",
            self.ls,
            held.resource,
            held.mode.name,
            held.owner.describe(),
            held.label,
        )

    # -- restart ------------------------------------------------------------------------

    def adopt(self, owner: Owner, recorded: list[HeldLock]) -> list[str]:
        """Adopt the orphans of a recorded owner whose QEMU still runs; returns losses."""
        lost = []
        for held in recorded:
            resource = held.resource
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
                lost.append(held.label)
                continue
            self._note(held)
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
