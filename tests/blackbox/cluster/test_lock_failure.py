"""Lock-failure actions (<on_lockfailure>): dlm_controld is killed on node-a while three
writer guests hold locks there.

The kernel stops every lockspace when dlm_controld exits, so node-a can no longer trust or
release its locks; virtdlmd sees it (its health watch) and applies each domain's action
through libvirt: vm-1 `poweroff` is destroyed, vm-2 `pause` is suspended, vm-3 `ignore` runs
on. node-b's dlm_controld sees node-a's daemon leave, kicks it out of corosync and fences it
(fencing node-a waits RACE_DELAY_S, lab/host/fencing.py), so the actions must come within
ACTION_BOUND_S of the kill, before the fence. Then node-b's DLM recovers without node-a and
vm-1 starts there; no audit, at any poll, may see two writers of a disk. node-a is powered
on again and the lab must heal.
"""

from __future__ import annotations

import json
import time
import uuid

import libvirt
import pytest

from lab.cluster import NODES, Lab
from lab.host import fencing
from lab.host.objects import PowerWatch
from lab.settings import lab_prefix
from lab.suite.matrix import BLOCK, ONE, TWO, nfs_storage
from lab.suite.steps import NODE_A, NODE_B, OK, QUERY_TIMEOUT_S, StepResult, TwoNode
from lab.virt.domain import Disk, DomainSpec
from lab.virt.hypervisor import LibvirtFailure
from lab.virt.refusal import LOCK_MANAGER

from .conftest import Record
from .test_partition import (
    SPLIT_LOG,
    audit,
    power_on,
    report_timeline,
    survivor_view,
    wait_fenced,
)

pytestmark = [
    pytest.mark.timeout(1800),
    # The actions are seen in the race delay before node-a's fence, which only the
    # two-node lab has; with three or more nodes the majority fences at once.
    pytest.mark.skipif(len(NODES) != 2, reason="needs the two-node fence delay"),
]

TABLE = "lock failure: dlm_controld killed on node-a"
# virtdlmd's health watch polls every 2 s (health_interval_s), then one libvirt call
ACTION_BOUND_S = 8.0
assert ACTION_BOUND_S < fencing.RACE_DELAY_S, "the actions must be seen before node-a's fence"
TAKEOVER_DEADLINE_S = 240.0
POLL_S = 0.5
ACTIONS = {"vm-1": "poweroff", "vm-2": "pause", "vm-3": "ignore"}


def writers(tn: TwoNode, mount_point: str) -> dict[str, DomainSpec]:
    disks = {
        "vm-1": Disk(BLOCK.path(ONE)),
        "vm-2": Disk(BLOCK.path(TWO)),
        "vm-3": Disk(nfs_storage(mount_point).path(TWO)),
    }
    return {
        vm: DomainSpec(
            vm,
            (disks[vm],),
            uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"virtdlm-lab:lockfailure/{vm}")),
            writer_boot=tn.writer_boot,
            writer_slot=slot,
            on_lockfailure=ACTIONS[vm],
        )
        for slot, vm in enumerate(ACTIONS)
    }


def state_on(tn: TwoNode, node: str, vm: str) -> str:
    """running, paused, shut off, or gone (a transient domain that was destroyed)."""
    h = tn.hv[node]
    try:
        state = h.state(vm)
    except LibvirtFailure as err:
        if err.code == libvirt.VIR_ERR_NO_DOMAIN:
            return "gone"
        raise
    names = {
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    }
    return names.get(state, str(state))


EXPECTED = {"vm-1": "shut off", "vm-2": "paused", "vm-3": "running"}  # defined domains


@pytest.mark.allow_log(*SPLIT_LOG)
def test_dlm_controld_killed_each_vm_ends_as_its_on_lockfailure_says_and_node_b_takes_over(
    lab: Lab, tn: TwoNode, mount_point: str, record: Record
) -> None:
    if not lab.settings["fencing"]:
        pytest.skip("fencing: false in lab/settings.yaml: this case needs node-a fenced")
    vms = writers(tn, mount_point)
    for vm in vms.values():
        result = tn.start(NODE_A, vm)
        record(TABLE, f"{vm.name} (on_lockfailure {vm.on_lockfailure}) starts", result, OK)
        assert result.outcome == OK, result.describe()
    refused = tn.start(NODE_B, vms["vm-1"])
    record(TABLE, "while node-a holds it: vm-1 on node-b", refused, LOCK_MANAGER)
    assert refused.outcome == LOCK_MANAGER, refused.describe()

    since = time.time()
    killed = time.monotonic()
    watch = PowerWatch(lab_prefix() + NODE_A).start()  # from the kill: times the fence
    tn.shell(NODE_A, "kill -9 dlm_controld", "pkill -KILL -x dlm_controld")
    try:
        seen: dict[str, float] = {}
        status: dict[str, object] = {}
        acted = {f"{vm} {want}" for vm, want in EXPECTED.items() if want != "running"}
        while not acted <= set(seen):
            elapsed = time.monotonic() - killed
            assert elapsed < ACTION_BOUND_S, (
                f"within {ACTION_BOUND_S:.0f} s of the kill, only {seen} were seen"
            )
            for vm, want in EXPECTED.items():
                if want != "running" and state_on(tn, NODE_A, vm) == want:
                    seen.setdefault(f"{vm} {want}", elapsed)
            time.sleep(POLL_S)
        assert state_on(tn, NODE_A, "vm-3") == "running", "on_lockfailure ignore: vm-3 stopped"
        seen["vm-3 still running"] = time.monotonic() - killed
        out = tn.nodes[NODE_A].check("virtdlm status --json", QUERY_TIMEOUT_S).stdout
        status = json.loads(out)
        report_timeline(
            record,
            TABLE,
            NODE_A,
            seen,
            ("vm-1 shut off", "vm-2 paused", "vm-3 still running"),
            "seconds from the kill until a poll of node-a's libvirt saw it",
        )
        # node-a is fenced; node-b's DLM recovers without it and takes vm-1 over
        started: StepResult | None = None
        while started is None or started.outcome != OK:
            elapsed = time.monotonic() - killed
            assert elapsed < TAKEOVER_DEADLINE_S, f"no takeover on node-b in {elapsed:.0f} s"
            audit(tn, watch, NODE_A, f"lock-failure poll at {elapsed:.1f} s")
            view = survivor_view(tn.nodes[NODE_B], since)
            if view["ls_members"] == [2] and view["flags"] == 0:
                seen.setdefault("DLM on node-b recovered", elapsed)
                started = tn.start(NODE_B, vms["vm-1"])
            time.sleep(POLL_S)
        seen["vm-1 running on node-b"] = time.monotonic() - killed
        if watch.off_at is not None:
            seen["node-a powered off (fenced)"] = watch.off_at - killed
        report_timeline(
            record,
            TABLE,
            NODE_B,
            seen,
            ("node-a powered off (fenced)", "DLM on node-b recovered", "vm-1 running on node-b"),
            "seconds from the kill until a poll saw it",
        )
        health = status.get("health", {})
        lockfailure = status.get("lockfailure", {})
        assert isinstance(lockfailure, dict), status
        actions = {a["domain"]: a for a in lockfailure.get("actions", [])}
        assert isinstance(health, dict) and health.get("state") in ("stopped", "gone"), status
        assert actions["vm-1"]["outcome"].startswith("destroyed"), actions
        assert actions["vm-2"]["outcome"] == "paused", actions
        assert actions["vm-3"]["outcome"].startswith("ignored"), actions
        tn.destroy(NODE_B, "vm-1")
    finally:
        watch.stop()
        # node-a's DLM cannot recover without a reboot: node-b fences it, then the lab
        # powers it on (never before the fence: it would power off the booting node).
        wait_fenced(tn, NODE_A, NODE_B, since)
        power_on(lab, tn, NODE_A)
