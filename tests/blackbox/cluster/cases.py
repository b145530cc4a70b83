"""The matrix as data: tables 5-1 and 5-2 of the thesis, and 5-2 again on a block device.

A case is a setup (steps that must succeed) and a probe (the step whose outcome is the row):
on which node, what must come of it (``ok`` or the layer that refuses), the libvirt error code
and the holder a lock-manager refusal must name, and what the thesis expected in 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.suite.steps import NODE_A, NODE_B, Step
from lab.virt.refusal import LOCK_MANAGER, QEMU_IMAGE_LOCK

VIR_ERR_RESOURCE_BUSY = 87  # the lock manager refused
VIR_ERR_INTERNAL_ERROR = 1  # how QEMU's own image-lock failure reaches libvirt's caller
THESIS_REFUSED = 'refused: "failed to acquire lock: the lock could not be granted"'


@dataclass(frozen=True)
class Case:
    table: str
    case: str
    storage: str  # "nfs": images on the NFS share; "block": the shared disk's partitions
    setup: tuple[Step, ...]
    probe: Step
    thesis: str = ""  # the thesis's expectation, where it has one
    why: str = ""  # why today's expectation differs from the thesis's, or what it shows
    protection: bool = False  # a row the lock manager alone protects: the control run's rows

    @property
    def id(self) -> str:
        text = f"{self.table[:3]}-{self.storage}-{self.case}"
        return text.replace(" -> ", "-to-").replace(" ", "-")


START_1_A = Step(NODE_A, "start", "vm-1")
MIGRATE_1_AB = Step(NODE_A, "migrate", "vm-1", to=NODE_B)


def _refused_by_lock_manager(node: str, vm: str, holder: str) -> Step:
    return Step(node, "start", vm, expect=LOCK_MANAGER, code=VIR_ERR_RESOURCE_BUSY, holder=holder)


TABLE_5_1 = [
    Case("5-1 one node (NFS)", "vm-1", "nfs", (), START_1_A, "starts"),
    Case(
        "5-1 one node (NFS)",
        "vm-2 rw one.qcow2",
        "nfs",
        (START_1_A,),
        Step(NODE_A, "start", "vm-2", expect=QEMU_IMAGE_LOCK, code=VIR_ERR_INTERNAL_ERROR),
        THESIS_REFUSED,
        "QEMU >= 2.10 opens the image with its own lock before libvirt asks the lock "
        "manager, so on one host QEMU refuses first",
    ),
    Case(
        "5-1 one node (NFS)",
        "vm-3 ro one.qcow2",
        "nfs",
        (START_1_A,),
        Step(NODE_A, "start", "vm-3", expect=QEMU_IMAGE_LOCK, code=VIR_ERR_INTERNAL_ERROR),
        "starts",
        "QEMU's image lock refuses a reader while another QEMU on the host writes",
    ),
    Case(
        "5-1 one node (NFS)",
        "vm-4 shareable share.raw",
        "nfs",
        (START_1_A,),
        Step(NODE_A, "start", "vm-4"),
        "starts",
    ),
]


def table_5_2(storage: str) -> list[Case]:
    """vm-1 started on node-a and live-migrated to node-b; then the probes on node-a."""
    on_block = storage == "block"
    table = "5-2 across nodes (shared block device)" if on_block else "5-2 across nodes (NFS)"
    one, share = ("part1", "part2") if on_block else ("one.qcow2", "share.raw")
    # The thesis ran table 5-2 on NFS; its expectation holds for the same rows on a block
    # device, where only the lock manager can see the other node's writer.
    thesis = (lambda text: f"{text} (on NFS)") if on_block else (lambda text: text)
    block_why = "QEMU's image locks are per host: only the lock manager sees node-b's writer"
    return [
        Case(
            table,
            "vm-1 live-migrates a -> b",
            storage,
            (START_1_A,),
            MIGRATE_1_AB,
            thesis("migrates"),
            "the locks move with the VM: node-b holds them, node-a none",
        ),
        Case(
            table,
            "vm-1 started again on a",
            storage,
            (START_1_A, MIGRATE_1_AB),
            _refused_by_lock_manager(NODE_A, "vm-1", "vm-1@node-b"),
            thesis(THESIS_REFUSED),
            block_why if on_block else "",
            protection=True,
        ),
        Case(
            table,
            f"vm-2 rw {one}",
            storage,
            (START_1_A, MIGRATE_1_AB),
            _refused_by_lock_manager(NODE_A, "vm-2", "vm-1@node-b"),
            thesis(THESIS_REFUSED),
            block_why if on_block else "",
            protection=True,
        ),
        Case(
            table,
            f"vm-3 ro {one}",
            storage,
            (START_1_A, MIGRATE_1_AB),
            Step(NODE_A, "start", "vm-3"),
            thesis("starts"),
            "a read-only disk takes no lock",
        ),
        Case(
            table,
            f"vm-4 shareable {share}",
            storage,
            (START_1_A, MIGRATE_1_AB),
            Step(NODE_A, "start", "vm-4"),
            thesis("starts"),
            "shared (PR) beside vm-1's shared lock",
        ),
    ]


TABLE_5_2 = table_5_2("nfs") + table_5_2("block")
PROTECTION_ROWS = [c for c in TABLE_5_2 if c.protection]
