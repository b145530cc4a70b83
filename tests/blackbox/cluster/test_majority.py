"""Partitions of a lab of three or more nodes (VIRTDLM_LAB_NODES=3): quorum decides.

A minority cut off: the last node (node-c in a three-node lab) runs vm-1 writing the
first block partition (and one.qcow2 on the share) when its cluster link to every other
node is cut. It loses quorum; the majority (node-a, node-b) stays quorate, fences it
(fence_virt -> fence_virtd, action off; nobody waits, unlike the two-node race), its DLM
recovers without it, and node-a starts vm-1. Every poll runs the suite's audits: never
two writers, by libvirt, /proc or the writers' own data. The timeline is reported; then
the fenced node is powered on, rejoins, and the lab must be healthy again.

Everyone cut off from everyone (1|1|1): no partition has a majority, so nobody is
quorate, nobody fences (dlm_controld fences only with quorum), and no lock may be granted
anywhere: a start on any node is refused at once by virtdlmd (LOCKSPACE_UNAVAILABLE:
"lockspace libvirt on node-x cannot be used: node-x is not quorate"). Running VMs get
what their <on_lockfailure> says once quorum has been gone for quorum_grace_s: vm-1
(poweroff) on node-a is destroyed, vm-2 (ignore) on node-b runs on. No double writer
appears at any poll. Then every node is power-cycled, as an operator restarts a cluster
that lost quorum everywhere (merging the halves back would make each fence the others).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import libvirt
import pytest

from lab.cluster import NODES, Lab
from lab.host.objects import PowerWatch
from lab.nodes import node_id
from lab.nodes.health import parse_quorum
from lab.settings import cluster_addresses, lab_prefix
from lab.suite import partition
from lab.suite.matrix import BLOCK, ONE, TWO, nfs_storage
from lab.suite.steps import NODE_A, OK, TwoNode
from lab.virt.domain import Disk, DomainSpec
from lab.virt.refusal import LOCK_MANAGER
from lab.wait import LabError

from .conftest import Record
from .node_loss import (
    audit,
    heal_and_record,
    healthy,
    power_on,
    report_timeline,
    survivor_view,
    wait_fenced,
    wait_healthy,
)
from .test_lock_failure import state_on
from .test_partition import SPLIT_LOG

pytestmark = [
    pytest.mark.timeout(1800),
    pytest.mark.skipif(len(NODES) < 3, reason="needs three nodes: VIRTDLM_LAB_NODES=3 make lab"),
]

SURVIVOR, LOSER = NODE_A, NODES[-1]
FENCE_LINE = re.compile(rf"fence (request|result) {node_id(LOSER)}\b")
TAKEOVER_DEADLINE_S = 240.0
SPLIT_DEADLINE_S = 180.0
POLL_S = 1.0
QUORUM_TIMEOUT_S = 10.0
# virtdlmd's refusal while its node is not quorate (plugin/virtdlm/health.py)
NOT_QUORATE = "is not quorate"


def writer(tn: TwoNode, name: str, disks: tuple[Disk, ...], on_lockfailure: str = "") -> DomainSpec:
    return DomainSpec(
        name,
        disks,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"virtdlm-lab:majority/{name}")),
        writer_boot=tn.writer_boot,
        on_lockfailure=on_lockfailure,
    )


def quorate(tn: TwoNode, node: str) -> bool | None:
    """The node's own view (over the management network, which no cut touches); None when
    it does not answer (a node being fenced stops answering in the middle of a call)."""
    try:
        out = tn.nodes[node].run("corosync-quorumtool -s", timeout_s=QUORUM_TIMEOUT_S)
    except LabError:  # being fenced: the power watch says so on the next poll
        return None
    if not out.stdout:
        return None
    return parse_quorum(out.stdout)[0]


def others(node: str) -> list[str]:
    return [n for n in NODES if n != node]


@pytest.fixture
def loser_comes_back(lab: Lab, tn: TwoNode) -> Iterator[dict[str, float]]:
    """After the cut (its time in "cut"): the minority node is fenced (or powered off by
    the lab), powered on again, and the lab is healthy."""
    cut: dict[str, float] = {}
    yield cut
    if "cut" in cut and not healthy(tn.nodes, lab.settings):
        wait_fenced(tn, LOSER, SURVIVOR, cut["cut"])
        power_on(lab, tn, LOSER)


@pytest.mark.allow_log(*SPLIT_LOG)
def test_a_cut_off_minority_loses_quorum_is_fenced_and_node_a_takes_vm1_over(
    lab: Lab,
    tn: TwoNode,
    mount_point: str,
    record: Record,
    loser_comes_back: dict[str, float],
) -> None:
    if not lab.settings["fencing"]:
        pytest.skip("fencing: false in lab/settings.yaml: the fenced partition case needs it")
    table = f"{len(NODES)} nodes: {LOSER} cut off from the majority, fencing on"
    vm = writer(tn, "vm-1", (Disk(nfs_storage(mount_point).path(ONE)), Disk(BLOCK.path(ONE))))
    first = tn.start(LOSER, vm)
    record(table, f"vm-1 starts on {LOSER}", first, OK)
    assert first.outcome == OK, first.describe()
    for node in others(LOSER):
        before = tn.start(node, vm)
        record(table, f"while {LOSER} runs it: vm-1 on {node}", before, LOCK_MANAGER)
        assert before.outcome == LOCK_MANAGER, before.describe()
        assert before.holder == f"vm-1@{LOSER}", before.describe()

    addresses = cluster_addresses(lab.settings)
    since = loser_comes_back["cut"] = time.time()
    cut_at = time.monotonic()
    partition.cut(tn.nodes[LOSER], [addresses[n] for n in others(LOSER)])
    survivors = sorted(node_id(n) for n in others(LOSER))
    seen: dict[str, float] = {}
    with PowerWatch(lab_prefix() + LOSER) as watch:
        while True:
            elapsed = time.monotonic() - cut_at
            assert elapsed < TAKEOVER_DEADLINE_S, (
                f"vm-1 not running on {SURVIVOR} {TAKEOVER_DEADLINE_S:.0f} s after the cut; "
                f"seen so far: {seen}"
            )
            if watch.off_at is not None:
                seen[f"{LOSER} powered off"] = watch.off_at - cut_at
                tn.down.add(LOSER)
            elif f"{LOSER} loses quorum" not in seen and quorate(tn, LOSER) is False:
                seen[f"{LOSER} loses quorum"] = time.monotonic() - cut_at
            view = survivor_view(tn.nodes[SURVIVOR], since)
            if view["members"] == len(NODES) - 1:
                seen.setdefault(f"corosync drops {LOSER}", elapsed)
            if FENCE_LINE.search(view["fence"]):
                seen.setdefault("fence issued", elapsed)
            if view["ls_members"] == survivors and view["flags"] == 0:
                seen.setdefault("DLM recovered", elapsed)
            audit(tn, watch, LOSER, f"partition poll at {elapsed:.1f} s")
            if "DLM recovered" in seen:
                result = tn.start(SURVIVOR, vm)
                if result.outcome == OK:
                    seen[f"vm-1 running on {SURVIVOR}"] = time.monotonic() - cut_at
                    break
            time.sleep(POLL_S)
    report_timeline(
        record,
        table,
        SURVIVOR,
        seen,
        (
            f"corosync drops {LOSER}",
            f"{LOSER} loses quorum",
            "fence issued",
            f"{LOSER} powered off",
            "DLM recovered",
            f"vm-1 running on {SURVIVOR}",
        ),
        "seconds from the cut until a poll saw it (a poll every ~2 s)",
    )
    assert f"{LOSER} powered off" in seen, f"{LOSER} was never fenced: {seen}"
    assert seen[f"{LOSER} powered off"] <= seen[f"vm-1 running on {SURVIVOR}"], seen
    assert {(d, m) for d, _, m in tn.held(SURVIVOR)} == {("vm-1", "EX")}
    tn.destroy(SURVIVOR, "vm-1")

    heal_and_record(lab, tn, record, table, LOSER)


@pytest.fixture
def everyone_restarted(lab: Lab, tn: TwoNode) -> Iterator[None]:
    """Whatever the test saw, every node is power-cycled (the cuts die with the nodes'
    memory) and the lab is healthy again."""
    yield
    lab.power_cycle()
    for name in NODES:
        tn.rebooted(name)
    tn.down.clear()
    wait_healthy(tn, lab.settings, "the lab after a power cycle of every node")


@pytest.mark.allow_log(*SPLIT_LOG)
def test_with_no_majority_nobody_is_granted_a_lock_and_vms_follow_their_policy(
    lab: Lab, tn: TwoNode, record: Record, everyone_restarted: None
) -> None:
    table = f"{len(NODES)} nodes: every node cut off from every other (no majority)"
    b = NODES[1]
    vms = {
        "vm-1": writer(tn, "vm-1", (Disk(BLOCK.path(ONE)),), "poweroff"),
        "vm-2": writer(tn, "vm-2", (Disk(BLOCK.path(TWO)),), "ignore"),
    }
    for vm, node in (("vm-1", NODE_A), ("vm-2", b)):
        started = tn.start(node, vms[vm])
        record(table, f"{vm} ({vms[vm].on_lockfailure}) starts on {node}", started, OK)
        assert started.outcome == OK, started.describe()

    addresses = cluster_addresses(lab.settings)
    cut_at = time.monotonic()
    for node in NODES:
        partition.cut(tn.nodes[node], [addresses[n] for n in others(node)])
    seen: dict[str, float] = {}
    watches = [PowerWatch(lab_prefix() + n) for n in NODES]
    for w in watches:
        w.start()
    try:
        while True:
            elapsed = time.monotonic() - cut_at
            assert elapsed < SPLIT_DEADLINE_S, f"the split never settled: seen {seen}"
            off = [w.domain for w in watches if w.off]
            assert not off, f"{off} powered off: nobody has quorum, so nobody may fence"
            for node in NODES:
                if f"{node} loses quorum" not in seen and quorate(tn, node) is False:
                    seen[f"{node} loses quorum"] = time.monotonic() - cut_at
            if state_on(tn, NODE_A, "vm-1") in ("shut off", "gone"):
                seen.setdefault("vm-1 (poweroff) destroyed on node-a", elapsed)
            tn.invariant(after=f"split poll at {elapsed:.1f} s")
            lost_quorum = all(f"{n} loses quorum" in seen for n in NODES)
            if lost_quorum and "vm-1 (poweroff) destroyed on node-a" in seen:
                break
            time.sleep(POLL_S)
        assert state_on(tn, b, "vm-2") == "running", "vm-2 (ignore) did not run on"
        # No lock anywhere: vm-3 wants the partition vm-1 left (its release cannot reach
        # the stopped lockspace) on every node, and is refused at once by virtdlmd.
        vm3 = writer(tn, "vm-3", (Disk(BLOCK.path(ONE)),))
        for node in NODES:
            refused = tn.start(node, vm3)
            record(
                table,
                f"no majority: vm-3 on {node}",
                refused,
                LOCK_MANAGER,
                note=f"LOCKSPACE_UNAVAILABLE, {time.monotonic() - cut_at:.0f} s after the cut",
            )
            assert refused.outcome != OK, f"{node} granted a lock without quorum"
            assert refused.outcome == LOCK_MANAGER, refused.describe()
            # dlm.so refuses in QEMU's pre-exec child, whose "dlm: ..." line libvirt reports
            # as an internal error (code 1) with the daemon's words
            assert refused.code == libvirt.VIR_ERR_INTERNAL_ERROR, refused.describe()
            assert f"dlm: lockspace libvirt on {node}" in refused.message, refused.describe()
            assert NOT_QUORATE in refused.message, refused.describe()
        tn.invariant(after="the refused starts")
    finally:
        for w in watches:
            w.stop()
    report_timeline(
        record,
        table,
        NODE_A,
        seen,
        (*(f"{n} loses quorum" for n in NODES), "vm-1 (poweroff) destroyed on node-a"),
        "seconds from the cut until a poll saw it",
    )
    assert state_on(tn, b, "vm-2") == "running", "vm-2 (ignore) stopped during the split"
