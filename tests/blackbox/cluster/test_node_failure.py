"""Node failure: node-a is powered off hard while vm-1 runs there and holds its disk.

The disk is the shared block device (node-a also serves the NFS share, which is gone with
it). Before the power-off node-b is refused by the lock manager; after it, node-b watches
corosync drop node-a and the DLM recover the lockspace without it, which frees node-a's
locks, and then starts vm-1. The times from power-off are measured and reported.
Then node-a is powered on again and the cluster must heal: quorate with two members, the
lockspace joined on both, the share mounted, virtdlmd up, and a live migration a -> b.

With fencing on (the lab's default), node-b's DLM waits for the fence of node-a before it
recovers: fence_virt powers off a node that is already off, which succeeds at once, after
the 10 s that fencing node-a waits (it wins fence races: lab/host/fencing.py). The fence is
in the timeline. With fencing: false the DLM recovers without it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from lab.cluster import HOST_URI, NODES, Lab
from lab.command import check as host_check
from lab.settings import lab_prefix
from lab.suite.matrix import BLOCK, thesis_vms
from lab.suite.steps import NODE_A, NODE_B, OK, StepResult, TwoNode
from lab.virt.refusal import LOCK_MANAGER, log_signs

from .conftest import Record
from .node_loss import REJOIN_LOG, heal_and_record, power_on, survivor_view

pytestmark = [
    # power-off, DLM recovery, a TCG boot of node-a and its rejoin, a smoke migration
    pytest.mark.timeout(1500),
    # node-a, the NFS server, lost with one survivor; N > 2: test_majority.py
    pytest.mark.skipif(len(NODES) != 2, reason="the two-node loss; N > 2: test_majority.py"),
]

TABLE = "node failure (shared block device)"
RECOVERY_DEADLINE_S = 180.0
FENCED = re.compile(r"fence result 1 .* result 0")  # dlm_controld: node-a's fence succeeded


def host_virsh(*args: str, timeout_s: float = 60.0) -> None:
    host_check(["virsh", "-c", HOST_URI, *args], timeout_s=timeout_s)


@pytest.fixture
def node_a_comes_back(lab: Lab, tn: TwoNode) -> Iterator[None]:
    """Whatever happens in the test, node-a is powered on again and the lab healed."""
    yield
    if NODE_A in tn.down:
        power_on(lab, tn, NODE_A)


# The nodes' journals (lab.suite.journal): node-b's refusal before the power-off, and the
# fence of node-a (dlm_controld and fence_virt, in dlm.service). The rest must be clean:
# node-b's view of the loss (corosync logs it as notices) and node-a's whole new boot.
@pytest.mark.allow_log(*log_signs(LOCK_MANAGER), "fence", *REJOIN_LOG)
def test_node_a_powered_off_node_b_starts_vm1_after_dlm_recovery_and_the_cluster_heals(
    lab: Lab, tn: TwoNode, record: Record, node_a_comes_back: None
) -> None:
    vm1 = thesis_vms(BLOCK, writer_boot=tn.writer_boot)["vm-1"]
    b = tn.nodes[NODE_B]
    first = tn.start(NODE_A, vm1)
    record(TABLE, "vm-1 starts on node-a", first, OK)
    assert first.outcome == OK, first.describe()
    before = tn.start(NODE_B, vm1)
    record(TABLE, "while node-a runs: vm-1 on node-b", before, LOCK_MANAGER)
    assert before.outcome == LOCK_MANAGER and before.holder == "vm-1@node-a", before.describe()

    since = time.time()
    powered_off = time.monotonic()
    host_virsh("destroy", lab_prefix() + NODE_A)  # a hard power-off: no shutdown, no release
    tn.down.add(NODE_A)
    # node-b's view, polled: corosync drops node 1, then the DLM recovers the lockspace
    # without it (members [2], flags 0: not stopped), which frees node-a's locks.
    seen: dict[str, float] = {}
    while "dlm" not in seen:
        assert time.monotonic() - powered_off < RECOVERY_DEADLINE_S, (
            f"no DLM recovery on node-b {RECOVERY_DEADLINE_S:.0f} s after node-a's power-off"
        )
        view = survivor_view(b, since)
        members, ls_members, flags = view["members"], view["ls_members"], view["flags"]
        fenced = FENCED.search(view["fence"]) is not None
        if members == 1:
            seen.setdefault("corosync", time.monotonic() - powered_off)
        if fenced:
            seen.setdefault("fence", time.monotonic() - powered_off)
        if ls_members == [2] and flags == 0:
            seen["dlm"] = time.monotonic() - powered_off
        time.sleep(0.2)
    result = tn.start(NODE_B, vm1)
    started_s = time.monotonic() - powered_off
    moments = [("corosync drops node-a", seen.get("corosync", seen["dlm"]))]
    if lab.settings["fencing"]:
        moments.append(("node-b's DLM fenced node-a", seen.get("fence", seen["dlm"])))
    moments.append(("DLM recovered without node-a", seen["dlm"]))
    for what, seconds in moments:
        record(
            TABLE,
            f"node-a powered off: {what}",
            StepResult(NODE_B, "watch", "", OK, None, seconds),
            OK,
            note="seconds from power-off until a poll of node-b saw it (a poll every ~0.5 s; "
            + ("fencing on)" if lab.settings["fencing"] else "fencing: false)"),
        )
    record(
        TABLE,
        "node-a powered off: vm-1 starts on node-b",
        StepResult(NODE_B, "start", "vm-1", result.outcome, result.code, started_s),
        OK,
        note="seconds: power-off to a successful start on node-b, first try after recovery",
    )
    assert result.outcome == OK, result.describe()
    assert {(d, m) for d, _, m in tn.held(NODE_B)} == {("vm-1", "EX"), ("vm-1", "PR")}
    tn.destroy(NODE_B, "vm-1")

    heal_and_record(lab, tn, record, TABLE, NODE_A)
