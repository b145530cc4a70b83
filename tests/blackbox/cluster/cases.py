"""The two-node matrix as data: table 5-1 of the thesis (lab.suite.matrix, the rows both tiers
run) on node-a, table 5-2 across the nodes, and 5-2 again on a block device.

A case is a setup (steps that must succeed) and a probe (the step whose outcome is the row):
on which node, what must come of it (``ok`` or the layer that refuses), the libvirt error code
and the holder a lock-manager refusal must name, and what the thesis expected in 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from lab.suite import matrix
from lab.suite.matrix import FIRST, IMAGES, PARTITIONS, THESIS_REFUSED, vm_label
from lab.suite.steps import NODE_A, NODE_B, Step
from lab.virt.refusal import LOCK_MANAGER, log_signs


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

    @property
    def allow_log(self) -> tuple[str, ...]:
        """What the probe's expected refusal leaves in the nodes' journals."""
        return log_signs(self.probe.expect)


START_1_A = Step(NODE_A, "start", FIRST)
MIGRATE_1_AB = Step(NODE_A, "migrate", FIRST, to=NODE_B)
IMAGE_FILES = {disk: image.file for disk, image in IMAGES.items()}


def _refused_by_lock_manager(node: str, vm: str, holder: str) -> Step:
    return Step(
        node, "start", vm, expect=LOCK_MANAGER, code=libvirt.VIR_ERR_RESOURCE_BUSY, holder=holder
    )


def _case_5_1(row: matrix.Row) -> Case:
    """A row of table 5-1 on node-a, images on the NFS share."""
    return Case(
        "5-1 one node (NFS)",
        vm_label(row.vm, IMAGE_FILES) if row.while_first_runs else row.vm,
        "nfs",
        (START_1_A,) if row.while_first_runs else (),
        Step(NODE_A, "start", row.vm, expect=row.expect, code=row.code),
        row.thesis,
        row.why,
    )


TABLE_5_1 = [_case_5_1(row) for row in matrix.TABLE_5_1]


def table_5_2(storage: str) -> list[Case]:
    """vm-1 started on node-a and live-migrated to node-b; then the probes on node-a."""
    on_block = storage == "block"
    table = "5-2 across nodes (shared block device)" if on_block else "5-2 across nodes (NFS)"
    names = PARTITIONS if on_block else IMAGE_FILES
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
            vm_label("vm-2", names),
            storage,
            (START_1_A, MIGRATE_1_AB),
            _refused_by_lock_manager(NODE_A, "vm-2", "vm-1@node-b"),
            thesis(THESIS_REFUSED),
            block_why if on_block else "",
            protection=True,
        ),
        Case(
            table,
            vm_label("vm-3", names),
            storage,
            (START_1_A, MIGRATE_1_AB),
            Step(NODE_A, "start", "vm-3"),
            thesis("starts"),
            "a read-only disk takes no lock",
        ),
        Case(
            table,
            vm_label("vm-4", names),
            storage,
            (START_1_A, MIGRATE_1_AB),
            Step(NODE_A, "start", "vm-4"),
            thesis("starts"),
            "shared (PR) beside vm-1's shared lock",
        ),
    ]


TABLE_5_2 = table_5_2("nfs") + table_5_2("block")
PROTECTION_ROWS = [c for c in TABLE_5_2 if c.protection]
