"""The control run: the protection rows with libvirt's "nop" lock manager on both nodes.

Without a lock manager nothing stops a second writer on the other node (QEMU's image locks
are per host, NFSv3 here has no cross-node locks, and a block device has none at all), so
each of these rows must fail: the double start happens and the audits see two running
domains writing one disk. The rows are strict expected failures: if the suite ever saw
protection under "nop", it could not be trusted to see its absence under "dlm". Their
scenarios are scenarios/control/*.yaml: the tables' files with lock_manager nop.
The lab is switched to "nop" for this module only and back to its setting afterwards
(``make lab`` also puts the setting back, should a run be interrupted here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from lab.cluster import NODES, Lab
from lab.scenario import audits
from lab.scenario.run import Result
from lab.scenario.schema import Scenario
from lab.suite.audit import AuditFailure
from lab.suite.data import DataAuditFailure
from lab.suite.steps import TwoNode

from .cases import PROTECTION_ROWS, Case
from .conftest import CASE_TIMEOUT_S, Play, Record, lock_manager_of
from .test_tables import report_probe

pytestmark = pytest.mark.timeout(CASE_TIMEOUT_S)
WHY = "expected to start: nothing guards the disk across nodes without a lock manager"


def switch_lock_manager(tn: TwoNode, manager: str) -> None:
    tn.set_lock_manager(manager)
    for name in NODES:
        assert lock_manager_of(tn.nodes[name]) == manager


@contextlib.contextmanager
def lock_manager_meanwhile(lab: Lab, tn: TwoNode, manager: str) -> Iterator[None]:
    """Every node on `manager` (no domain left over), and back on the lab's setting after."""
    tn.remove_everything()
    switch_lock_manager(tn, manager)
    try:
        yield
    finally:
        tn.remove_everything()
        switch_lock_manager(tn, str(lab.settings["lock_manager"]))


@pytest.fixture(scope="module", autouse=True)
def nop_lock_manager(lab: Lab, tn: TwoNode) -> Iterator[None]:
    with lock_manager_meanwhile(lab, tn, "nop"):
        yield


# Only the double-writer audits' failure is the expected one, and only with the disk's own
# evidence: two running writers of one disk in libvirt's view and in the nodes' /proc, and
# the collision the writer guests left on it (DataAuditFailure). A setup that fails, a probe
# refused by anything, or a double start the data does not show, is a real failure.
@pytest.mark.xfail(
    strict=True,
    raises=AuditFailure,
    reason="control run: lock_manager = nop cannot protect a disk across nodes",
)
@pytest.mark.parametrize("case", PROTECTION_ROWS, ids=[c.id for c in PROTECTION_ROWS])
def test_protection_row_without_a_lock_manager(
    tn: TwoNode, play: Play, record: Record, case: Case
) -> None:
    scenario = case.scenario("control")
    assert scenario.lab.lock_manager == "nop", f"{case.file}: the control runs under nop"
    table = f"control run: lock_manager = nop — {case.table}"
    result, _runner = play(scenario, report_probe(case, record, table, WHY))
    expect_double_writer(tn, scenario, result)


def expect_double_writer(tn: TwoNode, scenario: Scenario, result: Result) -> None:
    """Raise the audit's failure when the scenario's last step made the double writer that
    both double-writer audits (and the writer data, where the guests write) saw; fail the
    test for any other way of failing; return when it passed (a strict xfail then fails)."""
    if result.ok:
        return  # protected without a lock manager: strict xfail turns this into a failure
    last = result.records[-1]
    failed = {v.audit for v in audits.failed(audits.Verdict(**v) for v in last["audits"])}
    assert last["index"] == len(scenario.steps), f"failed before the probe: {result.failure}"
    assert "expectation" not in failed, f"the probe did not start: {result.failure}"
    assert "no double writer (QEMU processes)" in failed, (
        f"libvirt shows the double start but the nodes' /proc do not: {result.failure}"
    )
    invariant = last["invariant"]
    if tn.writer_boot:
        if invariant.get("evidence") != "data":
            pytest.fail(f"libvirt shows the double start but the disk does not: {result.failure}")
        raise DataAuditFailure(invariant["error"], invariant["saw"])
    raise AuditFailure(result.failure)
