"""A libvirt connection for tests: every call has a deadline, every failure says who refused.

Calls run on a helper thread (libvirt-python releases the GIL) and are awaited with a
timeout, so a hung libvirtd fails the test with LabTimeout instead of hanging the run.
Failures raise LibvirtFailure with libvirt's error code and domain and the refusing layer
(lab.virt.refusal).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from ..wait import LabError
from .domain import Disk, DomainSpec, disk_xml, domain_xml, target_name
from .refusal import Refusal, classify

T = TypeVar("T")
CALL_TIMEOUT_S = 90.0


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; tests read them from exceptions."""


libvirt.registerErrorHandler(_silence, None)


class LabTimeout(LabError):
    pass


class LibvirtFailure(LabError):
    def __init__(self, node: str, what: str, err: libvirt.libvirtError) -> None:
        self.code = err.get_error_code()
        self.domain = err.get_error_domain()
        self.message = err.get_error_message() or str(err)
        self.refusal: Refusal = classify(self.message, self.code)
        super().__init__(
            f"[{node}] {what}: code {self.code} domain {self.domain} "
            f"layer {self.refusal.layer}: {self.message}"
        )

    @property
    def layer(self) -> str:
        return self.refusal.layer


class Hypervisor:
    def __init__(self, uri: str, node: str = "local", timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.uri = uri
        self.node = node
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix=f"virt-{node}")
        self.conn: libvirt.virConnect = self.call("connect", libvirt.open, uri)

    def call(
        self, what: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None
    ) -> T:
        limit = timeout_s or self.timeout_s
        future = self._pool.submit(fn, *args)
        try:
            return future.result(limit)
        except concurrent.futures.TimeoutError as err:
            raise LabTimeout(f"[{self.node}] {what} did not finish in {limit:.0f} s") from err
        except libvirt.libvirtError as err:
            raise LibvirtFailure(self.node, what, err) from err

    def reconnect(self) -> None:
        """Open a fresh connection (the old one died with a libvirtd restart)."""
        old = self.conn
        self.conn = self.call("connect", libvirt.open, self.uri)
        with contextlib.suppress(libvirt.libvirtError):  # already broken: hence reconnect
            old.close()

    def close(self) -> None:
        try:
            self.call("close", self.conn.close, timeout_s=10)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- domains --------------------------------------------------------------------------

    def lookup(self, name: str) -> libvirt.virDomain:
        return self.call(f"lookup {name}", self.conn.lookupByName, name)

    def define(self, spec: DomainSpec) -> libvirt.virDomain:
        return self.call(f"define {spec.name}", self.conn.defineXML, domain_xml(spec))

    def start(self, name: str, paused: bool = False) -> float:
        """Start a defined domain; returns the seconds it took."""
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        dom = self.lookup(name)
        started = time.monotonic()
        self.call(f"start {name}", dom.createWithFlags, flags)
        return time.monotonic() - started

    def create(self, spec: DomainSpec, paused: bool = False) -> libvirt.virDomain:
        self.define(spec)
        self.start(spec.name, paused)
        return self.lookup(spec.name)

    def destroy(self, name: str) -> None:
        self.call(f"destroy {name}", self.lookup(name).destroy)

    def suspend(self, name: str) -> None:
        self.call(f"suspend {name}", self.lookup(name).suspend)

    def resume(self, name: str) -> None:
        self.call(f"resume {name}", self.lookup(name).resume)

    def save(self, name: str, path: str) -> None:
        self.call(f"save {name} {path}", self.lookup(name).save, path)

    def restore(self, path: str) -> None:
        self.call(f"restore {path}", self.conn.restore, path)

    def attach_disk(self, name: str, disk: Disk, index: int) -> None:
        dom = self.lookup(name)
        self.call(
            f"attach {disk.path} to {name}",
            dom.attachDeviceFlags,
            disk_xml(disk, target_name(index)),
            libvirt.VIR_DOMAIN_AFFECT_LIVE,
        )

    def detach_disk(self, name: str, path: str) -> None:
        """Hot-unplug the disk whose source is `path` (its XML as the domain has it)."""
        dom = self.lookup(name)
        xml = self.call(f"xml of {name}", dom.XMLDesc, 0)
        device = next((d for d in disk_elements(xml) if path in d), None)
        if device is None:
            raise LabError(f"[{self.node}] {name} has no disk {path}")
        self.call(
            f"detach {path} from {name}",
            dom.detachDeviceFlags,
            device,
            libvirt.VIR_DOMAIN_AFFECT_LIVE,
        )

    def state(self, name: str) -> int:
        state, _reason = self.call(f"state {name}", self.lookup(name).state)
        return int(state)

    def is_running(self, name: str) -> bool:
        return self.state(name) == int(libvirt.VIR_DOMAIN_RUNNING)

    def names(self) -> list[str]:
        doms = self.call("list domains", self.conn.listAllDomains, 0)
        return sorted(d.name() for d in doms)

    def remove(self, name: str) -> None:
        """Destroy (if running) and undefine, including managed save; absent is fine."""
        try:
            dom = self.lookup(name)
        except LibvirtFailure as err:
            if err.code == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        persistent = self.call(f"is persistent {name}", dom.isPersistent)
        if self.call(f"is active {name}", dom.isActive):
            self.call(f"destroy {name}", dom.destroy)
        if not persistent:  # a transient domain (created, migrated in) is gone once stopped
            return
        self.call(
            f"undefine {name}",
            dom.undefineFlags,
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
        )

    def remove_all(self) -> None:
        for name in self.names():
            self.remove(name)


def disk_elements(domain_xml_text: str) -> list[str]:
    """Each <disk> element of a domain's XML, as text (what detachDevice takes)."""
    import xml.etree.ElementTree as ET

    return [
        ET.tostring(d, encoding="unicode")
        for d in ET.fromstring(domain_xml_text).findall("./devices/disk")
    ]
