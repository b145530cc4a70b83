"""The thesis's experiment as data: its three disks, its VMs vm-1..vm-4, and table 5-1.

Both tiers run table 5-1 from here: tests/blackbox/local on one host, tests/blackbox/cluster on
node-a of the two-node lab. A row names the VM started (every row but vm-1's while vm-1
runs), what must come of it today (``ok`` or the refusing layer, with libvirt's error code)
and what the thesis expected in 2018, on QEMU 2.8, before QEMU locked its images itself.
Table 5-2 and each tier's other rows stay with their tier.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import libvirt

from ..virt.domain import Disk, DomainSpec
from ..virt.refusal import OK, QEMU_IMAGE_LOCK

# -- the disks -------------------------------------------------------------------------------

ONE, TWO, SHARE = "one", "two", "share"  # the thesis's disks, by their part in the tables


@dataclass(frozen=True)
class Image:
    file: str
    format: str  # qemu-img's -f
    size: str  # qemu-img's size argument


IMAGES = {
    ONE: Image("one.qcow2", "qcow2", "64M"),
    TWO: Image("two.qcow2", "qcow2", "64M"),
    SHARE: Image("share.raw", "raw", "16M"),
}
# The raw block device attached to both lab nodes, and its two partitions (lab/provision).
SHARED_DISK = "/dev/disk/by-id/virtio-virtdlm-shared"
PARTITIONS = {ONE: "part1", TWO: "part2", SHARE: "part2"}


@dataclass(frozen=True)
class Storage:
    """Where the three disks live: image files in a directory (the local lab's, the NFS
    share), or the partitions of the shared block device, where QEMU's image locks cannot
    cross nodes."""

    name: str
    prefix: str  # a disk's path is prefix + its name
    names: Mapping[str, str]  # ONE / TWO / SHARE -> file or partition name

    def path(self, disk: str) -> str:
        return self.prefix + self.names[disk]

    @property
    def one(self) -> str:
        return self.path(ONE)

    @property
    def two(self) -> str:
        return self.path(TWO)

    @property
    def share(self) -> str:
        return self.path(SHARE)


def image_storage(name: str, directory: str) -> Storage:
    return Storage(name, directory.rstrip("/") + "/", {d: i.file for d, i in IMAGES.items()})


def nfs_storage(mount_point: str) -> Storage:
    return image_storage("nfs", mount_point)


BLOCK = Storage("block", f"{SHARED_DISK}-", PARTITIONS)


def thesis_disks(mount_point: str) -> list[str]:
    """Every thesis disk the two-node lab has: the images on the share, the partitions."""
    return sorted({s.path(d) for s in (nfs_storage(mount_point), BLOCK) for d in IMAGES})


# -- the VMs ---------------------------------------------------------------------------------

RW, RO, SHAREABLE = "rw", "ro", "shareable"
FIRST = "vm-1"  # the VM that runs while the others start
THESIS_VMS: dict[str, tuple[tuple[str, str], ...]] = {  # vm -> ((disk, how), ...)
    FIRST: ((ONE, RW), (SHARE, SHAREABLE)),
    "vm-2": ((ONE, RW),),
    "vm-3": ((ONE, RO),),
    "vm-4": ((SHARE, SHAREABLE),),
}


def thesis_vms(
    storage: Storage, domain_type: str = "qemu", writer_boot: str = ""
) -> dict[str, DomainSpec]:
    """vm-1..vm-4 of the thesis's tables 5-1 and 5-2 on this storage; with writer_boot, as
    writer guests (lab.guest.writer) that really write their disks, each with its own slot
    on the shareable disk."""
    return {
        name: DomainSpec(
            name,
            tuple(
                Disk(storage.path(disk), readonly=how == RO, shareable=how == SHAREABLE)
                for disk, how in disks
            ),
            domain_type=domain_type,
            # One uuid per name and storage, the same on both nodes: the same VM wherever it runs.
            uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"virtdlm-lab:{storage.name}/{name}")),
            writer_boot=writer_boot,
            writer_slot=slot,
        )
        for slot, (name, disks) in enumerate(THESIS_VMS.items())
    }


def vm_label(vm: str, names: Mapping[str, str]) -> str:
    """'vm-2 rw one.qcow2': a VM and how it opens its disks, named as in `names`."""
    return " ".join([vm, *(f"{how} {names[disk]}" for disk, how in THESIS_VMS[vm])])


# -- table 5-1 -------------------------------------------------------------------------------

THESIS_REFUSED = 'refused: "failed to acquire lock: the lock could not be granted"'


@dataclass(frozen=True)
class Row:
    vm: str
    expect: str  # OK or the layer that must refuse (lab.virt.refusal)
    code: int | None  # the libvirt error code that refusal carries
    thesis: str  # what the thesis expected
    why: str = ""  # why today's expectation differs from the thesis's

    @property
    def while_first_runs(self) -> bool:
        return self.vm != FIRST


TABLE_5_1 = [
    Row(FIRST, OK, None, "starts"),
    Row(
        "vm-2",
        QEMU_IMAGE_LOCK,
        libvirt.VIR_ERR_INTERNAL_ERROR,  # how QEMU's image-lock failure reaches the caller
        THESIS_REFUSED,
        "QEMU >= 2.10 opens the image with its own lock before libvirt asks the lock "
        "manager, so on one host QEMU refuses first",
    ),
    Row(
        "vm-3",
        QEMU_IMAGE_LOCK,
        libvirt.VIR_ERR_INTERNAL_ERROR,
        "starts",
        "QEMU's image lock refuses a reader while another QEMU on the host writes "
        '(a shared "write" lock)',
    ),
    Row("vm-4", OK, None, "starts"),
]
