"""Domain XML from small specs: a name, disks (rw / readonly / shareable) and leases.

The domains run no OS, 32 MiB, no NIC: that is all a lock test needs, and it starts in
seconds under TCG. With a writer boot image (lab.guest.writer) the domain boots the writer
guest from it (a read-only first disk, so it takes no lock), which really writes its data
disks; they are then opened without the host's cache (cache='none'), so that what one node
writes is what the other reads. Without one, the domain runs firmware only.
"""

from __future__ import annotations

import uuid as uuid_mod
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from ..guest.writer import sysinfo_xml

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
    writer_boot: str = ""  # the writer guest's boot image: "" = firmware only
    writer_slot: int = 0  # its slot on shareable disks (distinct per domain sharing one)
    on_lockfailure: str = ""  # poweroff, restart, pause, ignore; "" = no element (default)

    @property
    def writer_modes(self) -> list[str]:
        return ["ro" if d.readonly else "shareable" if d.shareable else "rw" for d in self.disks]


def disk_xml(disk: Disk, target: str, uncached: bool = False, boot_order: int = 0) -> str:
    flags = ("<readonly/>" if disk.readonly else "") + ("<shareable/>" if disk.shareable else "")
    # Shared images must not be cached by the host; libvirt refuses writeback for them.
    cache = " cache='none'" if disk.shareable or uncached else ""
    kind, attr = ("block", "dev") if disk.is_block else ("file", "file")
    boot = f"<boot order='{boot_order}'/>" if boot_order else ""
    return (
        f"<disk type='{kind}' device='disk'>"
        f"<driver name='qemu' type='{disk.image_format}'{cache}/>"
        f"<source {attr}={quoteattr(disk.path)}/><target dev='{target}' bus='virtio'/>"
        f"{flags}{boot}</disk>"
    )


def lease_xml(lease: Lease) -> str:
    return (
        f"<lease><lockspace>{lease.lockspace}</lockspace><key>{lease.key}</key>"
        f"<target path={quoteattr(lease.path)} offset='{lease.offset}'/></lease>"
    )


def target_name(index: int) -> str:
    return "vd" + chr(ord("a") + index)


def domain_xml(spec: DomainSpec) -> str:
    writer = bool(spec.writer_boot)
    first = 1 if writer else 0  # the writer's boot disk is vda, the data disks follow
    # With per-disk boot orders libvirt boots strictly, and SeaBIOS gives a BIOS drive
    # number (0x80, 0x81, ...) only to disks with a boot order, in that order: the writer
    # finds its data disks at 0x81... in target order only if every disk has one.
    disks = "".join(
        disk_xml(d, target_name(first + i), writer, boot_order=first + i + 1 if writer else 0)
        for i, d in enumerate(spec.disks)
    )
    if writer:
        boot = disk_xml(Disk(spec.writer_boot, readonly=True), target_name(0), True, 1)
        disks = boot + disks
        sysinfo = sysinfo_xml(spec.name, spec.writer_modes, spec.writer_slot)
        os_boot = ""  # the disks carry <boot order='N'/>
    else:
        sysinfo, os_boot = "", "<boot dev='hd'/>"
    leases = "".join(lease_xml(lease) for lease in spec.leases)
    lockfailure = (
        f"<on_lockfailure>{spec.on_lockfailure}</on_lockfailure>" if spec.on_lockfailure else ""
    )
    return (
        f"<domain type='{spec.domain_type}'><name>{spec.name}</name><uuid>{spec.uuid}</uuid>"
        f"<memory unit='MiB'>{spec.memory_mib}</memory><vcpu>1</vcpu>{sysinfo}"
        f"<os><type arch='x86_64' machine='pc'>hvm</type>{os_boot}</os>"
        f"<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
        f"<on_crash>destroy</on_crash>{lockfailure}<devices>{disks}{leases}"
        f"<serial type='pty'/><console type='pty'/><memballoon model='none'/>"
        f"</devices></domain>"
    )
