"""Lock health: virtdlmd sees this node's lockspace stopped or gone, quorum lost, a fence
pending; refuses starts at once while it lasts, and keeps releases from a DLM that would block.

The node (health_node.py) is virtdlmd in this process over the model DLM, whose health the
test sets; on_lockfailure itself is test_lockfailure.py's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from lab.wait import wait_for
from virtdlm.backends.model_server import set_model_health
from virtdlm.client import Client
from virtdlm.protocol import OwnerSpec, Request

from .conftest import disk
from .health_node import (
    CLOCK,
    FAST_S,
    HEALTH_INTERVAL_S,
    QUORUM_GRACE_S,
    SEEN_WITHIN_S,
    Node,
    domain_state,
    refused_at_once,
    start_vm,
    wait_actions,
    wait_health,
    wait_readings,
)
from .procs import DaemonProc, FakeQemu

# -- detection and fast failure ----------------------------------------------------------------

FAULTS = [
    # id, model health, state seen, lost, what the refusal says, until when, what to check
    ("lockspace stopped", {"lockspace": "stopped"}, "stopped", True,
     "is stopped: the model lockspace is stopped (as when dlm_controld dies)",
     "the DLM recovers", "`systemctl status dlm`"),
    ("lockspace gone", {"lockspace": "gone"}, "gone", True,
     "is gone: the model lockspace is gone (this node left it)",
     "this node is in the lockspace again", "`dlm_tool ls`, then restart virtdlmd to join it"),
    ("quorum lost", {"quorate": False}, "not quorate", False,
     "cannot be used: node-a is not quorate (model quorum)",
     "quorum returns", "`corosync-quorumtool -s`"),
    ("fence pending", {"fencing_node": 2}, "fencing", False,
     "is waiting for fencing of node 2", "the fencing is done", "`dlm_tool status`"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "state", "lost", "what", "until", "check"),
    [case[1:] for case in FAULTS],
    ids=[case[0] for case in FAULTS],
)
def test_a_fault_is_seen_and_starts_are_refused_at_once(
    make_node: Callable[..., Node],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    fault: dict[str, Any],
    state: str,
    lost: bool,
    what: str,
    until: str,
    check: str,
) -> None:
    node = make_node(quorum_grace_s=60.0)  # quorum stays lost shorter than its grace here
    assert node.health()["state"] == "ok"
    vm = make_qemu(node.vdl.socket, "vm-1", [disk(images["one.qcow2"])], action="ignore")
    node.fault(**fault)
    wait_health(node, state, lost)
    message = (
        re.escape(f"lockspace libvirt on node-a {what} (since ")
        + CLOCK
        + re.escape(f"); starts are refused until {until}: check {check}")
    )
    with Client(node.vdl.socket) as client:
        err = refused_at_once(lambda: client.acquire(vm.owner, vm.disks))
        assert re.fullmatch(message, err.remote_message), err.remote_message
        me = OwnerSpec(uuid=vm.uuid, name="vm-2", id=2, pid=os.getpid())
        err = refused_at_once(lambda: client.register(me, vm.disks, restrict=False))
        assert re.fullmatch(message, err.remote_message), err.remote_message
    node.fault()
    wait_health(node, "ok", lost=False)
    assert node.vdl.send(vm.acquire_request())["ok"], "starts work again once it is healthy"


@pytest.mark.parametrize(
    "longer", [False, True], ids=["shorter than the grace", "longer than the grace"]
)
def test_quorum_counts_as_lost_only_after_its_grace(
    make_node: Callable[..., Node],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    longer: bool,
) -> None:
    caplog.set_level(logging.INFO)
    node = make_node()
    vm = start_vm(node, make_qemu, images["one.qcow2"], "vm-1", action="pause")
    node.fault(quorate=False)
    lost_at = time.monotonic()
    wait_health(node, "not quorate", lost=False)
    if longer:
        health = wait_health(node, "not quorate", lost=True)
        assert time.monotonic() - lost_at >= QUORUM_GRACE_S
        assert re.fullmatch(
            f"node-a has not been quorate since {CLOCK} "
            f"\\(more than quorum_grace_s = {QUORUM_GRACE_S:g} s\\)",
            health["lost_reason"],
        )
        (action,) = wait_actions(node, 1)
        assert (action["action"], action["outcome"]) == ("pause", "paused")
        assert domain_state(node.virt, vm.uuid) == "paused"
    else:
        time.sleep(QUORUM_GRACE_S / 3)  # the fault's duration: quorum comes back within grace
        assert not node.health()["lost"]
    node.fault()
    wait_health(node, "ok", lost=False)
    wait_readings(node)
    assert len(node.actions()) == (1 if longer else 0)
    assert domain_state(node.virt, vm.uuid) == ("paused" if longer else "running")
    assert any("locks are lost" in m for m in caplog.messages) == longer


# -- releases on a lockspace that takes no calls --------------------------------------------------


def test_releases_on_a_stopped_lockspace_answer_at_once_and_reach_the_dlm_once_it_runs(
    make_node: Callable[..., Node], make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    node = make_node()
    vm1 = start_vm(node, make_qemu, images["one.qcow2"], "vm-1", action="ignore")
    vm2 = start_vm(node, make_qemu, images["two.qcow2"], "vm-2", action="ignore")
    node.fault(lockspace="stopped")
    wait_health(node, "stopped")
    began = time.monotonic()
    assert node.vdl.send(vm1.release_request([]))["ok"]  # a suspend: libvirt releases
    assert time.monotonic() - began < FAST_S, "answered without the DLM, which blocks"
    vm2.kill()  # QEMU exits: its locks are released by virtdlmd itself
    wait_for(lambda: node.health()["pending_releases"] == 2, SEEN_WITHIN_S, 0.02, "2 pending")
    assert node.vdl.locks() == [], "the records are dropped at once"
    assert len(node.dlm.snapshot()) == 2, "the DLM still holds them: it takes no calls"
    node.fault()
    wait_for(lambda: node.dlm.snapshot() == [], SEEN_WITHIN_S, 0.02, "the releases sent")
    assert node.health()["pending_releases"] == 0
    start_vm(node, make_qemu, images["one.qcow2"], "vm-3")
    assert [lk["domain"] for lk in node.vdl.locks()] == ["vm-3"]


def test_a_gone_lockspace_takes_the_locks_with_it(
    make_node: Callable[..., Node], make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    node = make_node()
    vm = start_vm(node, make_qemu, images["one.qcow2"], "vm-1", action="ignore")
    node.fault(lockspace="gone")
    wait_health(node, "gone", lost=True)
    wait_actions(node, 1)
    wait_for(lambda: node.vdl.locks() == [], SEEN_WITHIN_S, 0.02, "records dropped")
    assert node.dlm.snapshot() == [] and node.health()["pending_releases"] == 0
    assert node.vdl.send(vm.release_request([]))["ok"]
    node.fault()
    wait_health(node, "ok")
    start_vm(node, make_qemu, images["one.qcow2"], "vm-2")  # the disk is free again


# -- the model served to a daemon process ------------------------------------------------------


def test_a_daemon_on_a_model_server_reads_the_health_a_test_sets(
    make_daemon: Callable[..., DaemonProc],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
) -> None:
    daemon = make_daemon(1, health_interval_s=HEALTH_INTERVAL_S)
    model = daemon.config["model_socket"]
    set_model_health(model, 1, lockspace="stopped")
    wait_for(
        lambda: daemon.send(Request("status"))["status"]["health"]["state"] == "stopped",
        SEEN_WITHIN_S,
        0.02,
        "node-a stopped",
    )
    with pytest.raises(AssertionError, match="refused LOCKSPACE_UNAVAILABLE: lockspace libvirt"):
        make_qemu(daemon.socket, "vm-1", [disk(images["one.qcow2"])])  # its register
    set_model_health(model, 1)
    wait_for(
        lambda: daemon.send(Request("status"))["status"]["health"]["state"] == "ok",
        SEEN_WITHIN_S,
        0.02,
        "node-a ok",
    )
    vm = make_qemu(daemon.socket, "vm-1", [disk(images["one.qcow2"])])
    assert daemon.send(vm.acquire_request())["ok"]


def test_the_first_start_after_a_fence_completes_is_not_refused_on_a_stale_reading(
    make_node: Callable[..., Node], make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    # A long interval: the monitor's own next reading comes long after the fence is over.
    node = make_node(health_interval_s=30.0)
    node.fault(fencing_node=2)
    assert node.vdl.daemon is not None
    node.vdl.run(node.vdl.daemon.monitor.check())  # a reading that sees the pending fence
    assert node.health()["state"] == "fencing"
    node.fault()  # the fence completed
    vm = make_qemu(node.vdl.socket, "vm-1", [disk(images["one.qcow2"])], action="ignore")
    began = time.monotonic()
    assert node.vdl.send(vm.acquire_request())["ok"], "refused for a fence that is over"
    assert time.monotonic() - began < FAST_S
    assert node.health()["state"] == "ok"


def test_readings_asked_at_once_share_one_probe_and_none_fails(
    make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    # The monitor's loop and a request that wants a fresh reading can ask together.
    node = make_node(health_interval_s=30.0)
    assert node.vdl.daemon is not None
    monitor = node.vdl.daemon.monitor

    async def together() -> list[Any]:
        return list(await asyncio.gather(*(monitor.check() for _ in range(5))))

    caplog.set_level(logging.ERROR)
    healths = node.vdl.run(together())
    assert [h.state for h in healths] == ["ok"] * 5
    assert not [r for r in caplog.records if "health probe failed" in r.getMessage()]
