"""Tables 5-1 and 5-2 of the thesis on the two-node lab, and 5-2 on the shared block device.

Each row is a scenario file (tests/blackbox/cluster/cases.py) run by the one scenario runner
(lab.scenario.run): its setup steps must succeed, its last step is the probe, whose outcome
is compared with today's expectation: ``ok``, or the refusing layer with libvirt's error code
and, for the lock manager, the holder it names. Every audit runs after every step. The
thesis's expectation is reported beside it.
"""

from __future__ import annotations

from typing import Any

import pytest

from lab.scenario.run import Outcome
from lab.suite.steps import NODE_A, NODE_B, OK

from .cases import TABLE_5_1, TABLE_5_2, Case
from .conftest import CASE_TIMEOUT_S, Play, Record, step_result

pytestmark = pytest.mark.timeout(CASE_TIMEOUT_S)  # a case: a handful of deadlined steps


def report_probe(case: Case, record: Record, table: str = "", why: str = "") -> Any:
    """An on_item hook: the probe (the scenario's last step) goes into the report as the
    row, before any assertion (the control run's double start fails its audits)."""
    last = len(case.scenario().steps)

    def on_item(outcomes: list[Outcome], item: dict[str, Any]) -> None:
        if item["index"] == last:
            o = outcomes[0]
            result = step_result(o, item)
            record(
                table or case.table, case.case, result, o.step.expect, case.thesis, why or case.why
            )

    return on_item


def params(cases: list[Case]) -> list[object]:
    """One row per case; a case whose probe must be refused allows that refusal's lines in
    the nodes' journals (and only that)."""
    return [pytest.param(c, id=c.id, marks=pytest.mark.allow_log(*c.allow_log)) for c in cases]


@pytest.mark.parametrize("case", params(TABLE_5_1 + TABLE_5_2))
def test_matrix_row(play: Play, record: Record, case: Case) -> None:
    scenario = case.scenario()
    result, runner = play(scenario, report_probe(case, record))
    assert result.ok, result.failure
    # vm-1 runs where the case left it and holds its locks there, and only there.
    moved = any(step.do == "migrate" for step in scenario.flat())
    here, there = (NODE_B, NODE_A) if moved else (NODE_A, NODE_B)
    tn = runner.tn
    disk, share = (d.path for d in runner.spec("vm-1").disks)
    assert tn.hv[here].is_running("vm-1")
    assert {(p, m) for d, p, m in tn.held(here) if d == "vm-1"} == {(disk, "EX"), (share, "PR")}
    assert not any(d == "vm-1" for d, _, _ in tn.held(there))
    probe = result.outcomes[-1]
    if probe.outcome != OK and probe.step.vm != "vm-1":  # a refused VM is left stopped
        assert not tn.hv[probe.step.node].is_running(probe.step.vm)
