"""The VM lifecycle across nodes: the lock follows the VM, and faults do not open a gap.

Each case is a scenario file under scenarios/lifecycle/ (replayable alone with `make replay`),
run by the one scenario runner with every audit after every step; every step is reported.
Images on the NFS share (no cross-node locking of its own: NFSv3, nolock), so whatever
refuses a second writer on the other node is the lock manager. What a file cannot say (the
writer guest's record across a migration or a reset, where a refused VM is left) is checked
here, after the run.
"""

from __future__ import annotations

import glob
import os
import shlex
from collections.abc import Callable
from typing import Any

import libvirt
import pytest

from lab.scenario.run import Outcome, Runner, allowed_log
from lab.scenario.schema import Scenario, load
from lab.suite.steps import NODE_A, NODE_B, TwoNode
from lab.virt.domain import DomainSpec
from lab.wait import wait_for

from .cases import SCENARIOS
from .conftest import CASE_TIMEOUT_S, Play, Record, step_result

pytestmark = pytest.mark.timeout(CASE_TIMEOUT_S)  # a case: a handful of deadlined steps

TABLE = "lifecycle across nodes (NFS)"
WRITER_START_S = 60.0  # a writer guest boots and writes its disk (nested TCG)
FILES = sorted(glob.glob(os.path.join(SCENARIOS, "lifecycle", "*.yaml")))


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


def held(tn: TwoNode, node: str) -> set[tuple[str, str, str]]:
    return tn.held(node)


# What each file's run must also show, read while it runs (after step N) and at its end.
Probe = Callable[[TwoNode, Runner, dict[int, Any]], None]


def writer_goes_on_across_migration(tn: TwoNode, runner: Runner, seen: dict[int, Any]) -> None:
    before, after = seen.get(1), seen.get(3)
    if before is not None:  # a migrated writer keeps its id and boot, and goes on counting
        assert after is not None and after[:2] == before[:2] and after[2] >= before[2], (
            f"vm-1's record on its disk before/after the migration: {before} / {after}"
        )
    assert held(tn, NODE_A) == set()


def paused_and_holding_nothing(tn: TwoNode, runner: Runner, seen: dict[int, Any]) -> None:
    assert tn.hv[NODE_A].state("vm-1") == libvirt.VIR_DOMAIN_PAUSED
    assert held(tn, NODE_A) == set(), "a refused resume must not keep part of its locks"


def writer_boots_again(tn: TwoNode, runner: Runner, seen: dict[int, Any]) -> None:
    before, spec = seen.get(1), runner.spec("vm-1")
    if before is None:
        return
    # the guest rebooted: same writer id, a new boot nonce
    wait_for(
        lambda: (now := writer_on(tn, spec)) is not None and now[1] != before[1],
        WRITER_START_S,
        0.5,
        "vm-1's writer to boot again after the reset",
    )
    after = writer_on(tn, spec)
    assert after is not None and after[0] == before[0], (before, after)


def source_keeps_running(tn: TwoNode, runner: Runner, seen: dict[int, Any]) -> None:
    two = runner.spec("vm-1").disks[0].path
    assert tn.hv[NODE_A].is_running("vm-1"), "the source VM must keep running"
    assert held(tn, NODE_A) == {("vm-1", two, "EX")}
    assert {d for d, _, _ in held(tn, NODE_B)} == {"vm-2"}
    assert "vm-1" not in tn.hv[NODE_B].names() or not tn.hv[NODE_B].is_running("vm-1")


CHECKS: dict[str, tuple[tuple[int, ...], Probe]] = {  # file -> (steps after which vm-1's
    # writer record is read, the check at the end)
    "migrate-back-and-forth": ((1, 3), writer_goes_on_across_migration),
    "suspend-then-resume-refused": ((), paused_and_holding_nothing),
    "reset-keeps-the-locks": ((1,), writer_boots_again),
    "migration-to-a-held-disk-fails": ((), source_keeps_running),
}


def params() -> list[object]:
    out = []
    for path in FILES:
        scenario = load(path)
        name = os.path.splitext(os.path.basename(path))[0]
        out.append(
            pytest.param(scenario, id=name, marks=pytest.mark.allow_log(*allowed_log(scenario)))
        )
    return out


@pytest.mark.parametrize("scenario", params())
def test_lifecycle(
    request: pytest.FixtureRequest,
    tn: TwoNode,
    play: Play,
    record: Record,
    mount_point: str,
    scenario: Scenario,
) -> None:
    name = request.node.callspec.id
    read_after, check = CHECKS.get(name, ((), None))
    seen: dict[int, Any] = {}
    runner_box: list[Runner] = []

    def on_item(outcomes: list[Outcome], item: dict[str, Any]) -> None:
        for o in outcomes:
            record(TABLE, name.replace("-", " "), step_result(o, item), o.step.expect, note=o.note)
        if item["index"] in read_after and runner_box:
            seen[item["index"]] = writer_on(tn, runner_box[0].spec("vm-1"))

    # The runner is needed inside the hook (the VMs' specs): play hands it over first.
    try:
        result, runner = play(scenario, on_item, runner_box.append)
        assert result.ok, result.failure
        if check is not None:
            check(tn, runner, seen)
    finally:
        if any(s.do == "save" for s in scenario.flat()):
            tn.nodes[NODE_A].run(f"rm -f {shlex.quote(mount_point)}/vm-1.save")
