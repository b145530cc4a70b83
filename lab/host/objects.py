"""The host's libvirt objects a lab makes: domains, networks and volumes (libvirt-python).

Every call goes through lab.virt.hypervisor.Hypervisor on qemu:///system, so each has a
deadline and a failure raises with libvirt's own code and message. Deciding which objects
to remove (by name prefix, by who still runs) is kept in pure functions, tested on names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType

import libvirt

from ..virt.hypervisor import Hypervisor, LibvirtFailure
from ..wait import LabError
from .libvirtd import HOST_URI

CALL_TIMEOUT_S = 60.0
POOL = "default"
LAB_FAMILY = "virtdlm-"  # every checkout's lab prefix starts so (lab.settings.lab_prefix)


def with_prefix(names: Iterable[str], prefix: str) -> list[str]:
    return sorted(n for n in names if n.startswith(prefix))


def owner_prefix(name: str) -> str:
    """The lab prefix of one of a lab's objects: `virtdlm-1a2b3c-mgmt` -> `virtdlm-1a2b3c-`."""
    return name.rsplit("-", 1)[0] + "-"


def foreign_leftovers(networks: Iterable[str], running: Iterable[str], prefix: str) -> list[str]:
    """Networks of other checkouts' stopped labs (they would hold our subnets).

    Raises LabError when another checkout's lab still runs: its networks must stay.
    """
    foreign = [n for n in with_prefix(networks, LAB_FAMILY) if not n.startswith(prefix)]
    busy = sorted({owner_prefix(n) for n in foreign if with_prefix(running, owner_prefix(n))})
    if busy:
        raise LabError(
            f"another virtdlm lab ({', '.join(p + '*' for p in busy)}) is running on this "
            "host and uses the same subnets: run 'make lab-destroy' in its checkout"
        )
    return foreign


class PowerWatch:
    """Watches one of the host's domains from a thread of its own and notes when it is
    first seen not running (a fence's power-off), so that a test's slower poll (SSH to the
    nodes, audits) does not blur the moment. Use as a context manager."""

    def __init__(self, domain: str, interval_s: float = 0.25) -> None:
        self.domain = domain
        self.interval_s = interval_s
        self.off_at: float | None = None  # time.monotonic() when first seen off
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{domain}", daemon=True)

    def start(self) -> PowerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CALL_TIMEOUT_S)

    def __enter__(self) -> PowerWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def off(self) -> bool:
        return self.off_at is not None

    def _run(self) -> None:
        host: HostObjects | None = None
        while not self._stop.is_set() and self.off_at is None:
            try:
                host = host or HostObjects()
                if not host.is_running(self.domain):
                    self.off_at = time.monotonic()
            except LabError as err:  # asked again next time; the last error is kept
                self.error = str(err)
                if host is not None:
                    host.hv.close()
                host = None
            self._stop.wait(self.interval_s)
        if host is not None:
            host.hv.close()


class HostObjects:
    """The host's domains, networks and volumes; use as a context manager."""

    def __init__(self, uri: str = HOST_URI, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.hv = Hypervisor(uri, "host", timeout_s)

    def __enter__(self) -> HostObjects:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.hv.close()

    # -- listing --------------------------------------------------------------------------

    def domains(self, running_only: bool = False) -> list[str]:
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if running_only else 0
        doms = self.hv.call("list domains", self.hv.conn.listAllDomains, flags)
        return sorted(d.name() for d in doms)

    def uuid(self, name: str) -> str:
        dom = self.hv.call(f"find domain {name}", self.hv.conn.lookupByName, name)
        return str(dom.UUIDString())

    def power_off(self, name: str) -> None:
        """Pull the plug: no shutdown, nothing in the guest is told."""
        self.hv.destroy(name)

    def power_on(self, name: str) -> None:
        self.hv.start(name)

    def is_running(self, name: str) -> bool:
        return self.hv.is_running(name)

    def networks(self) -> list[str]:
        nets = self.hv.call("list networks", self.hv.conn.listAllNetworks, 0)
        return sorted(n.name() for n in nets)

    def _pool(self, pool: str) -> libvirt.virStoragePool | None:
        """The storage pool, None when it is not there or not running (so: no volumes)."""
        try:
            found = self.hv.call(f"find pool {pool}", self.hv.conn.storagePoolLookupByName, pool)
        except LibvirtFailure as err:
            if err.code == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise
        return found if self.hv.call(f"is pool {pool} active", found.isActive) else None

    def volumes(self, pool: str = POOL) -> list[str]:
        found = self._pool(pool)
        if found is None:
            return []
        vols = self.hv.call(f"list volumes of {pool}", found.listAllVolumes, 0)
        return sorted(v.name() for v in vols)

    # -- removing -------------------------------------------------------------------------

    def remove_domain(self, name: str) -> None:
        """Destroy if running, undefine with its NVRAM and managed save; absent is fine."""
        self.hv.remove(name)

    def remove_network(self, name: str) -> None:
        """Stop if active, undefine if persistent; absent is fine."""
        try:
            net = self.hv.call(f"find network {name}", self.hv.conn.networkLookupByName, name)
        except LibvirtFailure as err:
            if err.code == libvirt.VIR_ERR_NO_NETWORK:
                return
            raise
        if self.hv.call(f"is network {name} active", net.isActive):
            self.hv.call(f"stop network {name}", net.destroy)
        if self.hv.call(f"is network {name} persistent", net.isPersistent):
            self.hv.call(f"undefine network {name}", net.undefine)

    def delete_volume(self, name: str, pool: str = POOL) -> None:
        """Delete one volume of `pool`; absent is fine."""
        found = self._pool(pool)
        if found is None:
            return
        try:
            vol = self.hv.call(f"find volume {name}", found.storageVolLookupByName, name)
        except LibvirtFailure as err:
            if err.code == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return
            raise
        self.hv.call(f"delete volume {pool}/{name}", vol.delete, 0)

    def remove_lab(self, prefix: str) -> list[str]:
        """Remove every domain, network and volume named `prefix*`; what was removed."""
        removed = []
        for name in with_prefix(self.domains(), prefix):
            self.remove_domain(name)
            removed.append(f"domain {name}")
        for name in with_prefix(self.networks(), prefix):
            self.remove_network(name)
            removed.append(f"network {name}")
        for name in with_prefix(self.volumes(), prefix):
            self.delete_volume(name)
            removed.append(f"volume {name}")
        return removed

    def clear_foreign_leftovers(self, prefix: str) -> list[str]:
        """Remove the networks of other checkouts' stopped labs; the names removed."""
        stale = foreign_leftovers(self.networks(), self.domains(running_only=True), prefix)
        for name in stale:
            self.remove_network(name)
        return stale
