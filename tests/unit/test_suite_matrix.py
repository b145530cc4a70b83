"""The thesis's experiment as data (lab.suite.matrix): one table 5-1 for both tiers."""

from __future__ import annotations

import libvirt

from lab.suite.matrix import (
    BLOCK,
    FIRST,
    PARTITIONS,
    TABLE_5_1,
    THESIS_VMS,
    image_storage,
    nfs_storage,
    thesis_vms,
    vm_label,
)
from lab.virt.refusal import OK, QEMU_IMAGE_LOCK
from tests.blackbox.cluster.cases import TABLE_5_1 as CLUSTER_5_1


def test_vm1_writes_one_and_shares_share_and_the_others_take_one_disk_each() -> None:
    vms = thesis_vms(nfs_storage("/mnt/shared/"))
    one, share = vms[FIRST].disks
    assert (one.path, one.readonly, one.shareable) == ("/mnt/shared/one.qcow2", False, False)
    assert (share.path, share.shareable) == ("/mnt/shared/share.raw", True)
    assert [len(vms[vm].disks) for vm in ("vm-2", "vm-3", "vm-4")] == [1, 1, 1]
    assert vms["vm-3"].disks[0].readonly and vms["vm-4"].disks[0].shareable


def test_a_vm_has_one_uuid_per_storage_whichever_node_builds_it() -> None:
    a, b = thesis_vms(nfs_storage("/x")), thesis_vms(nfs_storage("/y"))
    assert a[FIRST].uuid == b[FIRST].uuid != thesis_vms(BLOCK)[FIRST].uuid
    assert len({spec.uuid for spec in a.values()}) == len(THESIS_VMS)


def test_the_block_storage_uses_the_shared_disks_partitions() -> None:
    assert BLOCK.one.endswith("-part1") and BLOCK.share.endswith("-part2")
    assert thesis_vms(BLOCK)["vm-2"].disks[0].image_format == "raw"
    assert vm_label("vm-2", PARTITIONS) == "vm-2 rw part1"
    assert image_storage("local", "/l").names == nfs_storage("/n").names


def test_table_5_1_is_the_thesis_with_todays_refusals_by_qemus_image_lock() -> None:
    assert [(r.vm, r.thesis.split(":")[0]) for r in TABLE_5_1] == [
        ("vm-1", "starts"),
        ("vm-2", "refused"),
        ("vm-3", "starts"),
        ("vm-4", "starts"),
    ]
    refused = [r for r in TABLE_5_1 if r.expect != OK]
    assert [r.vm for r in refused] == ["vm-2", "vm-3"] and all(r.why for r in refused)
    assert {(r.expect, r.code) for r in refused} == {
        (QEMU_IMAGE_LOCK, libvirt.VIR_ERR_INTERNAL_ERROR)
    }
    assert [r.vm for r in TABLE_5_1 if not r.while_first_runs] == [FIRST]


def test_the_two_node_suite_runs_the_same_rows_on_node_a() -> None:
    assert [(c.probe.vm, c.probe.expect, c.probe.code, c.thesis) for c in CLUSTER_5_1] == [
        (r.vm, r.expect, r.code, r.thesis) for r in TABLE_5_1
    ]
    assert [c.case for c in CLUSTER_5_1] == [
        "vm-1",
        "vm-2 rw one.qcow2",
        "vm-3 ro one.qcow2",
        "vm-4 shareable share.raw",
    ]
