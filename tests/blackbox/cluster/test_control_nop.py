"""The control run: the protection rows with libvirt's "nop" lock manager on both nodes.

Without a lock manager nothing stops a second writer on the other node (QEMU's image locks
are per host, NFSv3 here has no cross-node locks, and a block device has none at all), so
each of these rows must fail: the double start happens and the cross-node invariant sees
two running domains writing one disk. The rows are strict expected failures: if the suite
ever saw protection under "nop", it could not be trusted to see its absence under "dlm".
The lab is switched to "nop" for this module only and back to its setting afterwards
(``make lab`` also puts the setting back, should a run be interrupted here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.cluster import NODES, Lab
from lab.nodes.provisioning import NODE_SH
from lab.suite.audit import AuditFailure
from lab.suite.data import DataAuditFailure
from lab.suite.steps import TwoNode
from lab.virt.domain import DomainSpec

from .cases import PROTECTION_ROWS, Case
from .conftest import CASE_TIMEOUT_S, Record, lock_manager_of
from .test_tables import assert_as_expected, probe, run_setup, vms_for

pytestmark = pytest.mark.timeout(CASE_TIMEOUT_S)


def switch_lock_manager(tn: TwoNode, manager: str) -> None:
    for name in NODES:
        tn.nodes[name].check(f"{NODE_SH} lock-manager {name} {manager}", timeout_s=120)
        tn.hv[name].reconnect()  # libvirtd restarted
        assert lock_manager_of(tn.nodes[name]) == manager


@pytest.fixture(scope="module", autouse=True)
def nop_lock_manager(lab: Lab, tn: TwoNode) -> Iterator[None]:
    tn.remove_everything()
    switch_lock_manager(tn, "nop")
    try:
        yield
    finally:
        tn.remove_everything()
        switch_lock_manager(tn, str(lab.settings["lock_manager"]))


def _control_table(case: Case) -> Case:
    return Case(
        f"control run: lock_manager = nop — {case.table}",
        case.case,
        case.storage,
        case.setup,
        case.probe,
        case.thesis,
        "expected to start: nothing guards the disk across nodes without a lock manager",
        case.protection,
    )


# Only the invariant's failure is the expected one, and only with the disk's own evidence:
# two running writers of one disk in libvirt's view, and the collision the writer guests
# left on it (DataAuditFailure). A setup that fails, a probe refused by anything, or a
# double start the data does not show, is a real failure.
@pytest.mark.xfail(
    strict=True,
    raises=AuditFailure,
    reason="control run: lock_manager = nop cannot protect a disk across nodes",
)
@pytest.mark.parametrize("case", PROTECTION_ROWS, ids=[c.id for c in PROTECTION_ROWS])
def test_protection_row_without_a_lock_manager(
    tn: TwoNode, mount_point: str, record: Record, case: Case
) -> None:
    vms: dict[str, DomainSpec] = vms_for(tn, case, mount_point)
    try:
        run_setup(tn, case, vms)
        result = probe(tn, _control_table(case), vms, record)
    except AuditFailure as err:
        if tn.writer_boot and not isinstance(err, DataAuditFailure):
            pytest.fail(f"libvirt shows the double start but the disk does not: {err}")
        raise
    assert_as_expected(case.probe, result)
