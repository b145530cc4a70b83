"""The owner registry: which QEMU processes own locks here, and for how long.

An owner lives from its first register or acquire until its QEMU exits, seen either as EOF
on the registration connection QEMU inherited or as its pidfd turning readable; then it is
retired and its locks released. After a restart, owners recorded in the state directory
whose QEMU still runs are adopted again with their locks; the rest are forgotten, and their
orphaned locks purged. Once the daemon stops, the registry is frozen: nobody is retired,
every lock outlives the daemon.

What an owner holds is the locker's record (``Locker.held_by``); the registry keeps only
the owners themselves. Requests change owners under the daemon's decision lock; retiring
one needs no lock and no wait: it is one step on the event loop that forgets the owner and
queues the release of its locks on the worker, behind every call queued before it (an
acquire still pending for that owner then keeps nothing: virtdlm.locker). While the
lockspace takes no calls (virtdlm.health), the release is stranded instead: it waits, off
the worker, until the lockspace runs again (Locker.strand).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator

from .errors import NoSuchProcess
from .locker import Locker
from .owners import Owner, OwnerKey, StateStore
from .procfs import process_alive, process_start_time
from .protocol import OwnerSpec
from .worker import Worker

log = logging.getLogger(__name__)


class OwnerRegistry:
    def __init__(
        self,
        locker: Locker,
        store: StateStore,
        worker: Worker,
        usable: Callable[[], bool] = lambda: True,
    ) -> None:
        self._locker = locker
        self._store = store
        self._worker = worker
        self._usable = usable  # the lockspace takes calls now (virtdlm.health)
        self._owners: dict[OwnerKey, Owner] = {}
        self.frozen = False

    def __len__(self) -> int:
        return len(self._owners)

    def __iter__(self) -> Iterator[Owner]:
        return iter(list(self._owners.values()))

    def save(self, owner: Owner) -> None:
        """Record in the state directory what the owner holds now (a retired owner: nothing)."""
        if owner.gone:
            return
        self._store.save(owner, self._locker.held_by(owner).values())

    # -- restart recovery ----------------------------------------------------------------

    async def recover(self, purge_orphans: bool) -> None:
        """Adopt the locks of recorded owners whose QEMU still runs; purge the rest."""
        for owner, recorded in self._store.load():
            if not process_alive(owner.pid, owner.start_time):
                log.info(
                    "owner %s is gone since the last run; its %d locks will be purged",
                    owner.describe(),
                    len(recorded),
                )
                self._store.forget(owner)
                continue
            lost = await self._worker.run(self._locker.adopt, owner, recorded)
            if lost:
                log.error(
                    "owner %s lost %s while virtdlmd was down", owner.describe(), ", ".join(lost)
                )
            self._owners[owner.key] = owner
            self.save(owner)
            self._watch(owner)
            log.info(
                "owner %s re-adopted with %d locks; watched by pidfd",
                owner.describe(),
                len(self._locker.held_by(owner)),
            )
        if purge_orphans:
            await self._worker.run(self._locker.purge)

    # -- owners ---------------------------------------------------------------------------

    def owner_for(self, spec: OwnerSpec, create: bool) -> Owner | None:
        """The live owner for (uuid, pid); a reused pid retires the old owner first.
        The caller holds the decision lock."""
        owner = self._owners.get((spec.uuid, spec.pid))
        start = process_start_time(spec.pid)
        if owner is not None and owner.start_time != start:
            self.retire(owner, "pid was reused")
            owner = None
        if owner is not None or not create:
            return owner
        if start is None:
            raise NoSuchProcess(f"domain {spec.name}: pid {spec.pid} is not running")
        owner = Owner(spec.uuid, spec.name, spec.pid, start)
        self._owners[owner.key] = owner
        self._watch(owner)
        log.info("owner %s registered", owner.describe())
        return owner

    def retire(self, owner: Owner, why: str) -> None:
        """QEMU exited (or its registration connection closed): forget the owner now, and
        queue the release of everything it holds. The release waits its turn on the worker
        for as long as the backend takes; it is never dropped."""
        if owner.gone or self.frozen:
            return
        owner.gone = True
        self._unwatch(owner)
        if self._owners.get(owner.key) is owner:
            del self._owners[owner.key]
        self._store.forget(owner)
        log.info(
            "owner %s gone (%s): releasing its %d locks",
            owner.describe(),
            why,
            len(self._locker.held_by(owner)),
        )
        if not self._usable():
            self._locker.strand(owner, None)
            return
        self._worker.submit(self._locker.release, owner, None)

    def freeze(self) -> None:
        """The daemon stops: retire nobody from now on, stop watching; locks stay held."""
        self.frozen = True
        for owner in self._owners.values():
            self._unwatch(owner)

    # -- watching QEMU ----------------------------------------------------------------------

    def _later(self, owner: Owner, why: str) -> None:
        asyncio.get_running_loop().call_soon(self.retire, owner, why)

    def _watch(self, owner: Owner) -> None:
        """Watch the QEMU pid with a pidfd: readable once it exits."""
        try:
            owner.pidfd = os.pidfd_open(owner.pid)
        except ProcessLookupError:
            self._later(owner, "process exited")
            return
        if process_start_time(owner.pid) != owner.start_time:
            os.close(owner.pidfd)
            owner.pidfd = -1
            self._later(owner, "pid was reused")
            return
        asyncio.get_running_loop().add_reader(owner.pidfd, self._exited, owner)

    def _exited(self, owner: Owner) -> None:
        """The pidfd turned readable: QEMU exited. Stop watching, retire the owner."""
        asyncio.get_running_loop().remove_reader(owner.pidfd)
        self.retire(owner, "process exited")

    def _unwatch(self, owner: Owner) -> None:
        if owner.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(owner.pidfd)
            os.close(owner.pidfd)
            owner.pidfd = -1
