"""Domain XML from small specs: a name, disks (rw / readonly / shareable) and leases.

The domains run no OS: firmware only, 32 MiB, no NIC. That is all a lock test needs, and it
starts in seconds under TCG.
"""

from __future__ import annotations

import uuid as uuid_mod
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

DEFAULT_MEMORY_MIB = 32


@dataclass(frozen=True)
class Disk:
    path: str
    readonly: bool = False
    shareable: bool = False
    format: str = ""  # "" = from the file name: .qcow2 -> qcow2, else raw

    @property
    def image_format(self) -> str:
        return self.format or ("qcow2" if self.path.endswith(".qcow2") else "raw")

    @property
    def is_block(self) -> bool:
        """A block device (a /dev path) rather than an image file."""
        return self.path.startswith("/dev/")


@dataclass(frozen=True)
class Lease:
    lockspace: str
    key: str
    path: str
    offset: int = 0


@dataclass(frozen=True)
class DomainSpec:
    name: str
    disks: tuple[Disk, ...] = ()
    leases: tuple[Lease, ...] = ()
    domain_type: str = "qemu"  # "kvm" where KVM really works
    memory_mib: int = DEFAULT_MEMORY_MIB
    uuid: str = field(default_factory=lambda: str(uuid_mod.uuid4()))


def disk_xml(disk: Disk, target: str) -> str:
    flags = ("<readonly/>" if disk.readonly else "") + ("<shareable/>" if disk.shareable else "")
    # Shared images must not be cached by the host; libvirt refuses writeback for them.
    cache = " cache='none'" if disk.shareable else ""
    kind, attr = ("block", "dev") if disk.is_block else ("file", "file")
    return (
        f"<disk type='{kind}' device='disk'>"
        f"<driver name='qemu' type='{disk.image_format}'{cache}/>"
        f"<source {attr}={quoteattr(disk.path)}/><target dev='{target}' bus='virtio'/>"
        f"{flags}</disk>"
    )


def lease_xml(lease: Lease) -> str:
    return (
        f"<lease><lockspace>{lease.lockspace}</lockspace><key>{lease.key}</key>"
        f"<target path={quoteattr(lease.path)} offset='{lease.offset}'/></lease>"
    )


def target_name(index: int) -> str:
    return "vd" + chr(ord("a") + index)


def domain_xml(spec: DomainSpec) -> str:
    disks = "".join(disk_xml(d, target_name(i)) for i, d in enumerate(spec.disks))
    leases = "".join(lease_xml(lease) for lease in spec.leases)
    return (
        f"<domain type='{spec.domain_type}'><name>{spec.name}</name><uuid>{spec.uuid}</uuid>"
        f"<memory unit='MiB'>{spec.memory_mib}</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
        f"<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
        f"<on_crash>destroy</on_crash><devices>{disks}{leases}"
        f"<serial type='pty'/><console type='pty'/><memballoon model='none'/>"
        f"</devices></domain>"
    )
