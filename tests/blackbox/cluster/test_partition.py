"""Network partitions: node-b's cluster link is cut (both ways, or only what it sends)
while vm-1 runs there and writes.

With fencing (the lab's default): node-a's dlm_controld must fence node-b (fence_virt ->
fence_virtd on the host, action off) before its DLM recovers node-b's locks; node-a, the
NFS server, wins the fence race by design (lab/host/fencing.py: fencing node-a waits).
Every poll after the cut runs the suite's audits (two running QEMUs of one disk in
libvirt's view, and the writers' own records on the disks): none may ever see two
writers. The timeline is reported: cut -> corosync drops node-b -> fence issued -> node-b
off -> DLM recovered -> vm-1 running on node-a; then node-b is powered on by the lab,
rejoins, and a live migration works (heal time).

The control: the same cut with fencing off (dlm.conf rewritten on both nodes, which the
lab power-cycles for it) must show the double writer, as a strict expected failure: that
is the evidence that fencing is what prevents it. vm-1 there has only the block partition:
the cut node's NFS mount hangs (hard), which would stall its writer guest's disk loop and
hide the second writer from the data.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest

from lab.cluster import NODES, Lab
from lab.host import fencing
from lab.host.objects import PowerWatch
from lab.settings import cluster_addresses, lab_prefix
from lab.suite import partition
from lab.suite.audit import AuditFailure
from lab.suite.data import DataAuditFailure
from lab.suite.matrix import BLOCK, ONE, nfs_storage
from lab.suite.steps import NODE_A, NODE_B, OK, StepResult, TwoNode
from lab.virt.domain import Disk, DomainSpec
from lab.virt.refusal import LOCK_MANAGER, log_signs

from .conftest import Record
from .node_loss import (
    NODE_LOSS_LOG,
    audit,
    heal_and_record,
    healthy,
    power_on,
    report_timeline,
    survivor_view,
    wait_fenced,
    wait_healthy,
)

pytestmark = [
    pytest.mark.timeout(1800),  # a cut, a fence, TCG boots of the fenced node
    # The two-node split: a fence race that node-a wins by its delay. With three or more
    # nodes quorum decides instead: test_majority.py.
    pytest.mark.skipif(len(NODES) != 2, reason="the two-node split; N > 2: test_majority.py"),
]

SURVIVOR, LOSER = NODE_A, NODE_B
assert fencing.SURVIVOR == SURVIVOR, "lab/host/fencing.py decides who wins the race"
# dlm_controld's "fence request 2 pid ..." / "fence result 2 pid ... result 0" lines
FENCE_LINE = re.compile(r"fence (request|result) 2\b")
TAKEOVER_DEADLINE_S = 240.0
UNFENCED_DEADLINE_S = 120.0
POLL_S = 1.0
# What the nodes log when a node is lost and fenced, and virtdlmd's BUSY.
SPLIT_LOG = (*NODE_LOSS_LOG, *log_signs(LOCK_MANAGER))


def vm1(tn: TwoNode, mount_point: str, with_nfs: bool) -> DomainSpec:
    """vm-1 writing the first block partition (and one.qcow2 on the share)."""
    disks = (Disk(BLOCK.path(ONE)),)
    if with_nfs:
        disks = (Disk(nfs_storage(mount_point).path(ONE)), *disks)
    return DomainSpec(
        "vm-1",
        disks,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"virtdlm-lab:partition/vm-1/{with_nfs}")),
        writer_boot=tn.writer_boot,
    )


@pytest.fixture
def loser_comes_back(lab: Lab, tn: TwoNode) -> Iterator[dict[str, float]]:
    """Whatever happens after the cut (the test puts its time in "cut"): node-b is fenced
    (never healed into the cluster: the halves would kill each other's corosync) and then
    powered on, and the lab is healthy again."""
    cut: dict[str, float] = {}
    yield cut
    if "cut" in cut and not healthy(tn.nodes, lab.settings):
        wait_fenced(tn, LOSER, SURVIVOR, cut["cut"])
        power_on(lab, tn, LOSER)


# Both directions, and one: node-b hears node-a but nothing it sends arrives (corosync's
# links need both ways, so this too is a split, reached differently).
@pytest.mark.allow_log(*SPLIT_LOG)
@pytest.mark.parametrize("direction", [partition.BOTH, partition.OUTBOUND])
def test_cut_node_b_is_fenced_and_node_a_takes_vm1_over_without_a_double_writer(
    lab: Lab,
    tn: TwoNode,
    mount_point: str,
    record: Record,
    loser_comes_back: dict[str, float],
    direction: str,
) -> None:
    if not lab.settings["fencing"]:
        pytest.skip("fencing: false in lab/settings.yaml: the fenced partition case needs it")
    table = f"partition of node-b ({direction}), fencing on"
    vm = vm1(tn, mount_point, with_nfs=True)
    first = tn.start(LOSER, vm)
    record(table, "vm-1 starts on node-b", first, OK)
    assert first.outcome == OK, first.describe()
    before = tn.start(SURVIVOR, vm)
    record(table, "while node-b runs it: vm-1 on node-a", before, LOCK_MANAGER)
    assert before.outcome == LOCK_MANAGER and before.holder == "vm-1@node-b", before.describe()

    since = loser_comes_back["cut"] = time.time()
    cut_at = time.monotonic()
    partition.cut(tn.nodes[LOSER], [cluster_addresses(lab.settings)[SURVIVOR]], direction)
    seen: dict[str, float] = {}
    attempts: list[StepResult] = []
    with PowerWatch(lab_prefix() + LOSER) as watch:
        while True:
            elapsed = time.monotonic() - cut_at
            assert elapsed < TAKEOVER_DEADLINE_S, (
                f"vm-1 not running on node-a {TAKEOVER_DEADLINE_S:.0f} s after the cut; "
                f"seen so far: {seen}"
            )
            if watch.off_at is not None:
                seen["node-b powered off"] = watch.off_at - cut_at
                tn.down.add(LOSER)  # the audits skip a node that is off
            view = survivor_view(tn.nodes[SURVIVOR], since)
            if view["members"] == 1:
                seen.setdefault("corosync drops node-b", elapsed)
            if FENCE_LINE.search(view["fence"]):
                seen.setdefault("fence issued", elapsed)
            if view["ls_members"] == [1] and view["flags"] == 0:
                seen.setdefault("DLM recovered", elapsed)
            # the audits, on every poll: never two writers, by libvirt or by the data
            audit(tn, watch, LOSER, f"partition poll at {elapsed:.1f} s")
            if "DLM recovered" in seen:
                result = tn.start(SURVIVOR, vm)
                attempts.append(result)
                if result.outcome == OK:
                    seen["vm-1 running on node-a"] = time.monotonic() - cut_at
                    break
            time.sleep(POLL_S)
    report_timeline(
        record,
        table,
        SURVIVOR,
        seen,
        (
            "corosync drops node-b",
            "fence issued",
            "node-b powered off",
            "DLM recovered",
            "vm-1 running on node-a",
        ),
        "seconds from the cut until a poll saw it (a poll every ~2 s)",
    )
    assert "node-b powered off" in seen, f"node-b was never fenced: {seen}"
    assert seen["node-b powered off"] <= seen["vm-1 running on node-a"], seen
    assert [a.outcome for a in attempts][-1] == OK
    assert {(d, m) for d, _, m in tn.held(SURVIVOR)} == {("vm-1", "EX")}
    tn.destroy(SURVIVOR, "vm-1")

    heal_and_record(lab, tn, record, table, LOSER)


@pytest.fixture
def fencing_off(lab: Lab, tn: TwoNode) -> Iterator[None]:
    """dlm.conf without fencing on both nodes for this test; the setting back after it."""
    tn.remove_everything()
    try:
        lab.set_fencing(False)
        for name in NODES:
            tn.rebooted(name)
        wait_healthy(tn, lab.settings | {"fencing": False}, "the lab without fencing")
        yield
    finally:
        # No heal first: the halves would merge and kill each other's corosync. The power
        # cycle that the new dlm.conf needs clears the cut with the nodes' memory.
        lab.set_fencing(bool(lab.settings["fencing"]))
        for name in NODES:
            tn.rebooted(name)
        wait_healthy(tn, lab.settings, "the lab to heal")


# The control: only the audit's failure with the disk's own evidence is the expected one.
@pytest.mark.xfail(
    strict=True,
    raises=AuditFailure,
    reason="control: without fencing the DLM hands a cut-off node's disk to a second writer",
)
@pytest.mark.allow_log(*SPLIT_LOG)
def test_control_without_fencing_the_cut_node_b_keeps_writing_while_node_a_starts_vm1(
    lab: Lab, tn: TwoNode, mount_point: str, record: Record, fencing_off: None
) -> None:
    table = "control: partition of node-b, fencing off"
    vm = vm1(tn, mount_point, with_nfs=False)
    first = tn.start(LOSER, vm)
    record(table, "vm-1 starts on node-b", first, OK)
    assert first.outcome == OK, first.describe()
    cut_at = time.monotonic()
    partition.cut(tn.nodes[LOSER], [cluster_addresses(lab.settings)[SURVIVOR]])
    tn.on_step = lambda result: record(
        table,
        "cut node-b: vm-1 on node-a",
        result,
        "expected to start: unfenced, node-b's locks are recovered while it still runs vm-1",
        note=f"{time.monotonic() - cut_at:.0f} s after the cut",
    )
    try:
        while True:
            assert time.monotonic() - cut_at < UNFENCED_DEADLINE_S, "node-a never started vm-1"
            try:
                result = tn.start(SURVIVOR, vm)
            except AuditFailure as err:
                if tn.writer_boot and not isinstance(err, DataAuditFailure):
                    pytest.fail(f"libvirt shows the double writer but the disk does not: {err}")
                raise
            if result.outcome == OK:
                break
            time.sleep(POLL_S)
    finally:
        tn.on_step = None
