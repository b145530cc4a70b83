"""The VM lifecycle across nodes: the lock follows the VM, and faults do not open a gap.

Images on the NFS share (no cross-node locking of its own: NFSv3, nolock), so whatever
refuses a second writer on the other node is the lock manager. Every step is reported.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import libvirt
import pytest

from lab.suite.matrix import nfs_storage, thesis_vms
from lab.suite.steps import NODE_A, NODE_B, OK, RELEASE_DEADLINE_S, StepResult, TwoNode
from lab.virt.domain import Disk, DomainSpec
from lab.virt.refusal import LOCK_DAEMON_DOWN, LOCK_MANAGER, log_signs
from lab.wait import wait_for

from .conftest import CASE_TIMEOUT_S, Record

pytestmark = pytest.mark.timeout(CASE_TIMEOUT_S)  # a case: a handful of deadlined steps

TABLE = "lifecycle across nodes (NFS)"
# The nodes' journals (lab.suite.journal): a test that expects refusals allows their lines.
ALLOW_REFUSALS = pytest.mark.allow_log(*log_signs(LOCK_MANAGER))
WRITER_START_S = 60.0  # a writer guest boots and writes its disk (nested TCG)


@pytest.fixture
def vms(tn: TwoNode, mount_point: str) -> dict[str, DomainSpec]:
    return thesis_vms(nfs_storage(mount_point), writer_boot=tn.writer_boot)


@pytest.fixture
def check(record: Record, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """check(result, expected=OK, holder="", note=""): report the step, then assert it."""
    case = request.node.name.removeprefix("test_").replace("_", " ")

    def _check(result: StepResult, expected: str = OK, holder: str = "", note: str = "") -> None:
        __tracebackhide__ = True
        record(TABLE, case, result, expected, note=note)
        assert result.outcome == expected, result.describe()
        if expected == LOCK_MANAGER:
            assert result.code == libvirt.VIR_ERR_RESOURCE_BUSY, result.describe()
        if holder:
            assert result.holder == holder, result.describe()

    return _check


def writer_on(tn: TwoNode, spec: DomainSpec) -> tuple[str, int, int] | None:
    """(writer, nonce, counter) on the domain's first disk, if it is a writer guest that
    wrote it; None for firmware-only domains (--no-writers)."""
    if not spec.writer_boot:
        return None
    wait_for(
        lambda: tn.read_disks([spec.disks[0].path])[0].record is not None,
        WRITER_START_S,
        0.5,
        f"{spec.name} to write {spec.disks[0].path}",
    )
    record = tn.read_disks([spec.disks[0].path])[0].record
    assert record is not None
    return record.writer, record.nonce, record.counter


def vm1_holds(tn: TwoNode, node: str, vms: dict[str, DomainSpec]) -> bool:
    disk, share = (d.path for d in vms["vm-1"].disks)
    return {(p, m) for d, p, m in tn.held(node) if d == "vm-1"} == {(disk, "EX"), (share, "PR")}


@ALLOW_REFUSALS
def test_migrate_back_and_forth_then_a_conflicting_start_is_refused_on_each_side(
    tn: TwoNode, vms: dict[str, DomainSpec], check
) -> None:
    check(tn.start(NODE_A, vms["vm-1"]))
    before = writer_on(tn, vms["vm-1"])
    check(tn.migrate("vm-1", NODE_A, NODE_B))
    check(tn.start(NODE_A, vms["vm-2"]), LOCK_MANAGER, "vm-1@node-b")
    after = writer_on(tn, vms["vm-1"])
    if before is not None:  # a migrated writer keeps its id and boot, and goes on counting
        assert after is not None and after[:2] == before[:2] and after[2] >= before[2], (
            f"vm-1's record on its disk before/after the migration: {before} / {after}"
        )
    check(tn.migrate("vm-1", NODE_B, NODE_A))
    assert vm1_holds(tn, NODE_A, vms) and tn.held(NODE_B) == set()
    check(tn.start(NODE_B, vms["vm-2"]), LOCK_MANAGER, "vm-1@node-a")
    check(tn.migrate("vm-1", NODE_A, NODE_B))
    check(tn.start(NODE_A, vms["vm-2"]), LOCK_MANAGER, "vm-1@node-b")
    assert vm1_holds(tn, NODE_B, vms) and tn.held(NODE_A) == set()


@ALLOW_REFUSALS
def test_suspend_releases_and_resume_is_refused_once_another_node_took_the_disk(
    tn: TwoNode, vms: dict[str, DomainSpec], check
) -> None:
    check(tn.start(NODE_A, vms["vm-1"]))
    check(tn.suspend(NODE_A, "vm-1"), note="a paused VM holds no lock (libvirt releases)")
    assert tn.held(NODE_A) == set()
    check(tn.start(NODE_B, vms["vm-2"]))
    check(tn.resume(NODE_A, "vm-1"), LOCK_MANAGER, "vm-2@node-b")
    assert tn.hv[NODE_A].state("vm-1") == libvirt.VIR_DOMAIN_PAUSED
    assert tn.held(NODE_A) == set(), "a refused resume must not keep part of its locks"


@ALLOW_REFUSALS
def test_save_on_node_a_and_restore_on_node_b(
    tn: TwoNode, vms: dict[str, DomainSpec], mount_point: str, check
) -> None:
    path = f"{mount_point}/vm-1.save"
    check(tn.start(NODE_A, vms["vm-1"]))
    try:
        check(tn.save(NODE_A, "vm-1", path))
        assert tn.held(NODE_A) == set()
        check(tn.restore(NODE_B, "vm-1", path))
        assert vm1_holds(tn, NODE_B, vms)
        check(tn.start(NODE_A, vms["vm-2"]), LOCK_MANAGER, "vm-1@node-b")
    finally:
        tn.nodes[NODE_A].run(f"rm -f {shlex.quote(path)}")


@ALLOW_REFUSALS
def test_reset_keeps_the_locks_and_the_writer_goes_on_with_a_new_boot(
    tn: TwoNode, vms: dict[str, DomainSpec], check
) -> None:
    check(tn.start(NODE_A, vms["vm-1"]))
    before = writer_on(tn, vms["vm-1"])
    check(tn.reset(NODE_A, "vm-1"), note="the same QEMU: no lock call, the locks stay")
    assert vm1_holds(tn, NODE_A, vms)
    check(tn.start(NODE_B, vms["vm-2"]), LOCK_MANAGER, "vm-1@node-a")
    if before is not None:  # the guest rebooted: same writer id, a new boot nonce
        wait_for(
            lambda: (after := writer_on(tn, vms["vm-1"])) is not None and after[1] != before[1],
            WRITER_START_S,
            0.5,
            "vm-1's writer to boot again after the reset",
        )
        after = writer_on(tn, vms["vm-1"])
        assert after is not None and after[0] == before[0], (before, after)


def test_destroy_on_node_a_then_start_on_node_b_at_once(
    tn: TwoNode, vms: dict[str, DomainSpec], check
) -> None:
    check(tn.start(NODE_A, vms["vm-1"]))
    check(tn.destroy(NODE_A, "vm-1"), note="libvirt makes no lock call: virtdlmd sees QEMU die")
    check(tn.start(NODE_B, vms["vm-1"]), note="first try, no retry")
    assert vm1_holds(tn, NODE_B, vms)


# libvirtd on node-a may find QEMU's monitor closed under a call.
@pytest.mark.allow_log("End of file from qemu monitor")
def test_kill_9_of_qemu_on_node_a_frees_the_disk_for_node_b_within_2s(
    tn: TwoNode, vms: dict[str, DomainSpec], check, record: Record
) -> None:
    check(tn.start(NODE_A, vms["vm-1"]))
    released_s = tn.kill_qemu(NODE_A, "vm-1")
    killed = tn.steps[-1]
    record(
        TABLE,
        "kill -9 of qemu: locks released",
        StepResult(NODE_A, killed.action, "vm-1", OK, None, released_s),
        f"ok within {RELEASE_DEADLINE_S:.0f} s",
        note="seconds: from kill -9 until virtdlmd on node-a holds none of vm-1's locks",
    )
    assert released_s <= RELEASE_DEADLINE_S, f"released after {released_s:.2f} s"
    check(tn.start(NODE_B, vms["vm-1"]), note="first try, no retry")
    assert vm1_holds(tn, NODE_B, vms)


@ALLOW_REFUSALS
def test_libvirtd_restart_on_node_a_keeps_the_protection(
    tn: TwoNode, vms: dict[str, DomainSpec], check
) -> None:
    check(tn.start(NODE_A, vms["vm-1"]))
    tn.shell(NODE_A, "restart libvirtd", "systemctl restart libvirtd", timeout_s=120)
    assert tn.hv[NODE_A].is_running("vm-1") and vm1_holds(tn, NODE_A, vms)
    check(tn.start(NODE_B, vms["vm-2"]), LOCK_MANAGER, "vm-1@node-a")
    check(tn.destroy(NODE_A, "vm-1"), note="through the restarted libvirtd")
    tn.wait_no_locks([NODE_A])
    check(tn.start(NODE_B, vms["vm-2"]))


@pytest.fixture
def virtdlmd_comes_back(tn: TwoNode) -> Iterator[None]:
    yield
    tn.nodes[NODE_A].run("systemctl start virtdlmd.socket virtdlmd.service", timeout_s=60)


@pytest.mark.allow_log(*log_signs(LOCK_MANAGER, LOCK_DAEMON_DOWN))
def test_virtdlmd_kill_9_on_node_a_keeps_the_protection_during_and_after_its_restart(
    tn: TwoNode, vms: dict[str, DomainSpec], check, virtdlmd_comes_back: None
) -> None:
    check(tn.start(NODE_A, vms["vm-1"]))
    # kill -9, then keep it down (stop cancels systemd's restart) to look at "during".
    tn.shell(
        NODE_A,
        "kill -9 virtdlmd and keep it down",
        'pid=$(systemctl show -p MainPID --value virtdlmd.service) && [ "$pid" -gt 0 ] && '
        'kill -9 "$pid" && systemctl stop virtdlmd.socket virtdlmd.service',
    )
    assert tn.hv[NODE_A].is_running("vm-1")
    check(
        tn.start(NODE_B, vms["vm-2"]),
        LOCK_MANAGER,
        "vm-1@node-a",
        note="during: node-a's locks outlive its daemon (orphans in the kernel DLM)",
    )
    check(
        tn.start(NODE_A, vms["vm-4"]),
        LOCK_DAEMON_DOWN,
        note="during: node-a cannot lock, so it starts nothing (fails closed)",
    )
    tn.shell(
        NODE_A,
        "start virtdlmd",
        "systemctl start virtdlmd.socket virtdlmd.service && virtdlm status >/dev/null",
    )
    wait_for(lambda: vm1_holds(tn, NODE_A, vms), 10, 0.2, "virtdlmd to adopt vm-1's locks")
    check(tn.start(NODE_B, vms["vm-2"]), LOCK_MANAGER, "vm-1@node-a", note="after the restart")
    check(tn.destroy(NODE_A, "vm-1"), note="the adopted owner is watched again")
    tn.wait_no_locks([NODE_A])
    check(tn.start(NODE_B, vms["vm-2"]))


@ALLOW_REFUSALS
def test_migration_to_a_node_where_the_disk_is_held_fails_and_the_source_keeps_its_lock(
    tn: TwoNode, vms: dict[str, DomainSpec], mount_point: str, check
) -> None:
    share = nfs_storage(mount_point)
    vm1 = DomainSpec("vm-1", (Disk(share.two),), uuid=vms["vm-1"].uuid, writer_boot=tn.writer_boot)
    # The destination is told (migration XML) that vm-1's disk is one.qcow2, which vm-2
    # on node-b holds: a mis-mapped disk path, caught at the destination's acquire.
    on_b = DomainSpec("vm-1", (Disk(share.one),), uuid=vm1.uuid, writer_boot=tn.writer_boot)
    check(tn.start(NODE_A, vm1))
    check(tn.start(NODE_B, vms["vm-2"]))
    result = tn.migrate("vm-1", NODE_A, NODE_B, dest_spec=on_b)
    check(result, LOCK_MANAGER, "vm-2@node-b")
    assert tn.hv[NODE_A].is_running("vm-1"), "the source VM must keep running"
    assert {(d, p, m) for d, p, m in tn.held(NODE_A)} == {("vm-1", share.two, "EX")}
    assert {d for d, _, _ in tn.held(NODE_B)} == {"vm-2"}
    assert "vm-1" not in tn.hv[NODE_B].names() or not tn.hv[NODE_B].is_running("vm-1")
