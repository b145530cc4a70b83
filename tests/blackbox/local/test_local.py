"""Single-host black-box tests: a real libvirtd loads dlm.so, QEMU runs under TCG.

Each refusal is asserted with libvirt's error code and the layer that refused: the lock
manager (VIR_ERR_RESOURCE_BUSY from VIR_FROM_LOCKING) or QEMU's own image lock, which on one
host acts first whenever QEMU opens an image another QEMU writes. Table 5-1 is the thesis's,
shared with the two-node suite (lab.suite.matrix).
"""

from __future__ import annotations

import os
import signal
import time

import libvirt
import pytest

from lab.guest import disks
from lab.guest.writer import SECTOR_BYTES, parse_record, shared_slot_lba
from lab.local import LocalLab
from lab.suite.matrix import FIRST, TABLE_5_1, Row
from lab.virt.domain import Disk, DomainSpec, Lease
from lab.virt.hypervisor import Hypervisor, LibvirtFailure
from lab.virt.refusal import LOCK_DAEMON_DOWN, LOCK_MANAGER, OK
from lab.wait import wait_for

from .conftest import MATRIX, RELEASE_DEADLINE_S, held, locks, spec

WRITER_START_S = 30.0  # a writer guest boots and writes (TCG)


def refused(hv: Hypervisor, action: str, *args: object) -> LibvirtFailure:
    """Run a hypervisor action that must fail; return the failure."""
    __tracebackhide__ = True
    with pytest.raises(LibvirtFailure) as info:
        getattr(hv, action)(*args)
    return info.value


def assert_lock_manager_refusal(err: LibvirtFailure, resource: str, holder: str) -> None:
    __tracebackhide__ = True
    assert err.layer == LOCK_MANAGER, err
    assert (err.code, err.domain) == (libvirt.VIR_ERR_RESOURCE_BUSY, libvirt.VIR_FROM_LOCKING), err
    assert err.refusal.holder_domain == holder and err.refusal.holder_node == "local", err
    assert resource in err.message, err


# -- table 5-1 of the thesis, on one host ----------------------------------------------------

WHILE_VM1_RUNS = [row for row in TABLE_5_1 if row.while_first_runs]


@pytest.mark.parametrize("row", WHILE_VM1_RUNS, ids=[r.vm for r in WHILE_VM1_RUNS])
def test_table_5_1_while_vm1_runs(
    lab: LocalLab,
    hv: Hypervisor,
    vms: dict[str, DomainSpec],
    row: Row,
    record_property: pytest.RecordProperty,
) -> None:
    hv.create(vms[FIRST])
    assert held(lab) == {("vm-1", "one.qcow2", "EX"), ("vm-1", "share.raw", "PR")}
    started = time.monotonic()
    try:
        hv.create(vms[row.vm])
        measured, code = OK, ""
    except LibvirtFailure as err:
        measured, code = err.layer, str(err.code)
    MATRIX.append(
        {
            "row": row.vm,
            "thesis": row.thesis,
            "measured": measured,
            "code": code,
            "seconds": f"{time.monotonic() - started:.2f}",
            "why": row.why,
        }
    )
    record_property("thesis", row.thesis)
    record_property("measured", measured)
    assert measured == row.expect
    if measured == OK:
        assert hv.is_running(row.vm)
    assert hv.is_running("vm-1")


def test_vm1_starts_and_holds_its_disks_in_the_right_modes(
    lab: LocalLab, hv: Hypervisor, images: dict[str, str]
) -> None:
    hv.create(
        spec(
            "vm-1",
            Disk(images["one.qcow2"]),
            Disk(images["share.raw"], shareable=True),
            Disk(images["two.qcow2"], readonly=True),
        )
    )
    assert held(lab) == {("vm-1", "one.qcow2", "EX"), ("vm-1", "share.raw", "PR")}


def test_writer_guests_write_their_disks_and_each_keeps_to_its_slot(
    request: pytest.FixtureRequest,
    hv: Hypervisor,
    vms: dict[str, DomainSpec],
    images: dict[str, str],
) -> None:
    """The data audits rest on this: a thesis VM really writes its exclusive disk (its
    counter rises) and only its own slot of the shareable one."""
    if not request.config.getoption("writers"):
        pytest.skip("--no-writers: the thesis VMs run firmware only")
    hv.create(vms[FIRST])
    hv.create(vms["vm-4"])
    one = images["one.qcow2"]

    def counter() -> int:
        record = disks.evidence(one).record
        assert record is None or record.writer == FIRST, record
        return record.counter if record else 0

    wait_for(lambda: counter() > 0, WRITER_START_S, 0.2, f"{FIRST} to write {one}")
    first = counter()
    wait_for(lambda: counter() > first, WRITER_START_S, 0.2, f"{FIRST}'s counter to rise")

    def slot_writers() -> list[str | None]:
        with open(images["share.raw"], "rb") as f:
            share = f.read(16 * SECTOR_BYTES)
        at = [shared_slot_lba(i) * SECTOR_BYTES for i in range(4)]
        return [
            r.writer if r else None for r in (parse_record(share[a : a + SECTOR_BYTES]) for a in at)
        ]

    wait_for(lambda: slot_writers()[3] is not None, WRITER_START_S, 0.2, "vm-4 to write its slot")
    writers = slot_writers()
    assert writers == [FIRST, None, None, "vm-4"], "each writer keeps to its own slot"
    assert disks.evidence(one).collision is None


# -- where the lock manager itself refuses: before QEMU opens the image ----------------------


def test_hotplug_of_a_disk_held_by_another_vm_is_refused_by_the_lock_manager(
    lab: LocalLab, hv: Hypervisor, images: dict[str, str]
) -> None:
    hv.create(spec("vm-1", Disk(images["one.qcow2"])))
    hv.create(spec("vm-2", Disk(images["two.qcow2"])))
    err = refused(hv, "attach_disk", "vm-2", Disk(images["one.qcow2"]), 1)
    assert_lock_manager_refusal(err, images["one.qcow2"], "vm-1")
    assert err.message == (
        f"resource busy: disk {images['one.qcow2']} is locked exclusively by vm-1 on local"
    )
    assert held(lab) == {("vm-1", "one.qcow2", "EX"), ("vm-2", "two.qcow2", "EX")}
    assert hv.is_running("vm-2")


def test_second_vm_with_the_same_lease_is_refused_by_the_lock_manager(
    lab: LocalLab, hv: Hypervisor, images: dict[str, str]
) -> None:
    lease = Lease("vms", "the-one-lease", os.path.join(lab.images, "leases"))
    hv.create(spec("vm-1", Disk(images["one.qcow2"]), leases=(lease,)))
    err = refused(hv, "create", spec("vm-2", Disk(images["two.qcow2"]), leases=(lease,)))
    assert_lock_manager_refusal(err, "vms/the-one-lease", "vm-1")
    assert "vm-2" not in {d for d, _, _ in held(lab)}  # all or nothing: two.qcow2 not kept


# -- lifecycle -------------------------------------------------------------------------------


def test_destroy_releases_at_once(lab: LocalLab, hv: Hypervisor, images: dict[str, str]) -> None:
    hv.create(spec("vm-1", Disk(images["one.qcow2"])))
    hv.destroy("vm-1")
    wait_for(lambda: locks(lab) == [], RELEASE_DEADLINE_S, 0.02, "release after destroy")
    hv.create(spec("vm-2", Disk(images["one.qcow2"])))
    assert held(lab) == {("vm-2", "one.qcow2", "EX")}


def test_kill_9_of_qemu_releases_within_one_second(
    lab: LocalLab, hv: Hypervisor, images: dict[str, str]
) -> None:
    hv.create(spec("vm-1", Disk(images["one.qcow2"])))
    pid = lab.qemu_pid("vm-1")
    assert pid is not None
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: locks(lab) == [], RELEASE_DEADLINE_S, 0.01, "release after kill -9")
    assert time.monotonic() - killed < RELEASE_DEADLINE_S


def test_suspend_releases_and_resume_reacquires(
    lab: LocalLab, hv: Hypervisor, images: dict[str, str]
) -> None:
    hv.create(spec("vm-1", Disk(images["one.qcow2"])))
    hv.suspend("vm-1")
    assert held(lab) == set()
    hv.resume("vm-1")
    assert held(lab) == {("vm-1", "one.qcow2", "EX")}
    assert hv.is_running("vm-1")


def test_save_then_restore(lab: LocalLab, hv: Hypervisor, images: dict[str, str]) -> None:
    hv.create(spec("vm-1", Disk(images["one.qcow2"])))
    saved = os.path.join(lab.images, "vm-1.save")
    hv.save("vm-1", saved)
    wait_for(lambda: locks(lab) == [], RELEASE_DEADLINE_S, 0.02, "release after save")
    try:
        hv.restore(saved)
        assert hv.is_running("vm-1")
        assert held(lab) == {("vm-1", "one.qcow2", "EX")}
    finally:
        os.unlink(saved)


def test_start_paused_holds_nothing_until_resume(
    lab: LocalLab, hv: Hypervisor, images: dict[str, str]
) -> None:
    hv.create(spec("vm-1", Disk(images["one.qcow2"])), paused=True)
    assert held(lab) == set()
    hv.resume("vm-1")
    assert held(lab) == {("vm-1", "one.qcow2", "EX")}


def test_readonly_disk_takes_no_lock(lab: LocalLab, hv: Hypervisor, images: dict[str, str]) -> None:
    hv.create(spec("vm-3", Disk(images["one.qcow2"], readonly=True)))
    assert hv.is_running("vm-3")
    assert locks(lab) == []


# -- restarts --------------------------------------------------------------------------------


def test_libvirtd_restart_keeps_every_lock(
    lab: LocalLab, hv: Hypervisor, images: dict[str, str]
) -> None:
    hv.create(spec("vm-1", Disk(images["one.qcow2"])))
    before = held(lab)
    lab.kill("libvirtd")
    assert held(lab) == before  # no lock call at all while libvirtd is away
    lab.start_libvirtd()
    fresh = Hypervisor(lab.uri)
    try:
        assert fresh.is_running("vm-1")
        assert held(lab) == before
        fresh.create(spec("vm-2", Disk(images["two.qcow2"])))
        err = refused(fresh, "attach_disk", "vm-2", Disk(images["one.qcow2"]), 1)
        assert_lock_manager_refusal(err, images["one.qcow2"], "vm-1")
        fresh.remove_all()
    finally:
        fresh.close()
    hv.reconnect()  # the session's connection died with libvirtd


def test_virtdlmd_kill_9_keeps_every_lock_and_the_protection(
    lab: LocalLab, hv: Hypervisor, images: dict[str, str]
) -> None:
    lease = Lease("vms", "kept-lease", os.path.join(lab.images, "leases"))
    hv.create(spec("vm-1", Disk(images["one.qcow2"]), leases=(lease,)))
    before = held(lab)
    lab.kill("virtdlmd", signal.SIGKILL)
    err = refused(hv, "create", spec("vm-2", Disk(images["two.qcow2"]), leases=(lease,)))
    assert err.layer == LOCK_DAEMON_DOWN, err  # fails closed: no daemon, no start
    lab.start_virtdlmd()
    assert held(lab) == before  # adopted from the model's orphans
    hv.remove("vm-2")
    err = refused(hv, "create", spec("vm-2", Disk(images["two.qcow2"]), leases=(lease,)))
    assert_lock_manager_refusal(err, "vms/kept-lease", "vm-1")
    hv.destroy("vm-1")  # the re-adopted owner is still watched
    wait_for(lambda: locks(lab) == [], RELEASE_DEADLINE_S, 0.02, "release after restart")
