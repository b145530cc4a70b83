"""Tables 5-1 and 5-2 of the thesis on the two-node lab, and 5-2 on the shared block device.

Each case (tests/blackbox/cluster/cases.py) runs its setup, which must succeed, then its
probe, whose outcome is compared with today's expectation: ``ok``, or the refusing layer
with libvirt's error code and, for the lock manager, the holder it names. The thesis's
expectation is reported beside it.
"""

from __future__ import annotations

import pytest

from lab.suite.matrix import BLOCK, nfs_storage, thesis_vms
from lab.suite.steps import NODE_A, NODE_B, OK, Step, StepResult, TwoNode
from lab.virt.domain import DomainSpec

from .cases import TABLE_5_1, TABLE_5_2, Case
from .conftest import CASE_TIMEOUT_S, Record

pytestmark = pytest.mark.timeout(CASE_TIMEOUT_S)  # a case: a handful of deadlined steps


def vms_for(tn: TwoNode, case: Case, mount_point: str) -> dict[str, DomainSpec]:
    storage = BLOCK if case.storage == "block" else nfs_storage(mount_point)
    return thesis_vms(storage, writer_boot=tn.writer_boot)


def run_setup(tn: TwoNode, case: Case, vms: dict[str, DomainSpec]) -> None:
    for step in case.setup:
        result = tn.play(step, vms)
        assert result.outcome == OK, f"setup of {case.id} failed: {result.describe()}"


def assert_as_expected(step: Step, result: StepResult) -> None:
    __tracebackhide__ = True
    assert result.outcome == step.expect, f"{step.describe()}: {result.describe()}"
    if step.code is not None:
        assert result.code == step.code, result.describe()
    if step.holder:
        assert result.holder == step.holder, result.describe()


def probe(tn: TwoNode, case: Case, vms: dict[str, DomainSpec], record: Record) -> StepResult:
    """Run the case's probe and put it in the report (before any assertion)."""
    # The control run's double start trips the invariant inside the step: report it first.
    tn.on_step = lambda result: record(
        case.table, case.case, result, case.probe.expect, case.thesis, case.why
    )
    try:
        return tn.play(case.probe, vms)
    finally:
        tn.on_step = None


def params(cases: list[Case]) -> list[object]:
    """One row per case; a case whose probe must be refused allows that refusal's lines in
    the nodes' journals (and only that)."""
    return [pytest.param(c, id=c.id, marks=pytest.mark.allow_log(*c.allow_log)) for c in cases]


@pytest.mark.parametrize("case", params(TABLE_5_1 + TABLE_5_2))
def test_matrix_row(tn: TwoNode, mount_point: str, record: Record, case: Case) -> None:
    vms = vms_for(tn, case, mount_point)
    run_setup(tn, case, vms)
    result = probe(tn, case, vms, record)
    assert_as_expected(case.probe, result)
    # vm-1 runs where the case left it and holds its locks there, and only there.
    moved = any(step.action == "migrate" for step in (*case.setup, case.probe))
    here, there = (NODE_B, NODE_A) if moved else (NODE_A, NODE_B)
    disk, share = (d.path for d in vms["vm-1"].disks)
    assert tn.hv[here].is_running("vm-1")
    assert {(p, m) for d, p, m in tn.held(here) if d == "vm-1"} == {(disk, "EX"), (share, "PR")}
    assert not any(d == "vm-1" for d, _, _ in tn.held(there))
    if result.outcome != OK and case.probe.vm != "vm-1":  # a refused VM is left stopped
        assert not tn.hv[case.probe.node].is_running(case.probe.vm)
