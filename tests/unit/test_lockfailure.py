"""Lock failure: once this node's locks are lost, each domain holding one gets its
on_lockfailure, once per loss, through libvirt's real test driver.

The node (health_node.py) is virtdlmd in this process over the model DLM, whose health the test
sets, acting on test:///default domains that the test sees too; lock health itself (detection,
refused starts, releases) is test_lock_health.py's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

import pytest

from lab.wait import wait_for
from virtdlm import cli
from virtdlm.lockfailure import RESTART_PENDING
from virtdlm.protocol import Request

from .health_node import (
    ACTED_WITHIN_S,
    CLOCK,
    TEST_URI,
    Node,
    domain_state,
    start_vm,
    wait_actions,
    wait_health,
    wait_readings,
)
from .procs import FakeQemu

# -- the action table ----------------------------------------------------------------------------

ACTIONS = [
    # id, on_lockfailure, persistent domain, state while lost, state once healthy, outcome
    ("poweroff", "poweroff", True, "shut off", "shut off", "destroyed"),
    ("default is poweroff", "default", True, "shut off", "shut off",
     "destroyed (default: poweroff)"),
    ("pause", "pause", True, "paused", "paused", "paused"),
    ("ignore", "ignore", True, "running", "running",
     "ignored: the domain runs on without its locks"),
    ("restart", "restart", True, "shut off", "running", "destroyed, then started again at "),
    ("restart transient", "restart", False, "absent", "running",
     "destroyed, then started again at "),
]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "persistent", "while_lost", "once_healthy", "outcome"),
    [case[1:] for case in ACTIONS],
    ids=[case[0] for case in ACTIONS],
)
def test_each_domain_holding_locks_gets_its_on_lockfailure(
    make_node: Callable[..., Node],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    action: str,
    persistent: bool,
    while_lost: str,
    once_healthy: str,
    outcome: str,
) -> None:
    caplog.set_level(logging.INFO)
    node = make_node()
    vm = start_vm(node, make_qemu, images["one.qcow2"], "vm-1", action, persistent)
    bystander = start_vm(  # holds no lock: a readonly disk only
        node, make_qemu, images["two.qcow2"], "vm-2", "poweroff", readonly=True
    )
    node.fault(lockspace="stopped")
    wait_health(node, "stopped", lost=True)
    (record,) = wait_actions(node, 1)
    assert (record["domain"], record["uuid"], record["action"]) == ("vm-1", vm.uuid, action)
    assert record["reason"] == (
        "lockspace libvirt on node-a: stopped: the model lockspace is stopped "
        "(as when dlm_controld dies)"
    )
    if action == "restart":
        assert record["outcome"] == RESTART_PENDING
    assert domain_state(node.virt, vm.uuid) == while_lost
    assert domain_state(node.virt, bystander.uuid) == "running"
    level = "WARNING" if action == "ignore" else "ERROR"
    line = next(r for r in caplog.records if r.getMessage().startswith(f"vm-1 (uuid {vm.uuid})"))
    assert line.levelname == level
    assert re.search(
        f"on_lockfailure {action}: .*; locks lost at {CLOCK}: lockspace", line.getMessage()
    )
    node.fault()
    wait_health(node, "ok")
    if once_healthy != while_lost:
        wait_for(
            lambda: domain_state(node.virt, vm.uuid) == once_healthy,
            ACTED_WITHIN_S,
            0.02,
            f"{vm.name} {once_healthy}",
        )
    wait_readings(node)
    (record,) = node.actions()
    assert record["outcome"].startswith(outcome), record
    assert domain_state(node.virt, vm.uuid) == once_healthy


def test_each_loss_applies_the_actions_once(
    make_node: Callable[..., Node], make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    node = make_node()
    vm = start_vm(node, make_qemu, images["one.qcow2"], "vm-1", action="pause")
    for loss in (1, 2):
        node.fault(lockspace="stopped")
        wait_health(node, "stopped", lost=True)
        wait_actions(node, loss)
        wait_readings(node)  # the loss goes on for a while: nothing more is done
        assert len(node.actions()) == loss
        assert domain_state(node.virt, vm.uuid) == "paused"
        node.fault()
        wait_health(node, "ok")
        node.virt.lookupByUUIDString(vm.uuid).resume()
    assert [a["outcome"] for a in node.actions()] == ["paused", "paused"]


def test_the_last_action_given_wins(
    make_node: Callable[..., Node], make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    node = make_node()
    vm = start_vm(node, make_qemu, images["one.qcow2"], "vm-1", action="poweroff")  # register
    assert node.vdl.send(Request("acquire", vm.owner, tuple(vm.disks), action="ignore"))["ok"]
    node.fault(lockspace="stopped")
    (record,) = wait_actions(node, 1)
    assert record["action"] == "ignore"
    assert domain_state(node.virt, vm.uuid) == "running"


# -- failures of the actuator, and status ----------------------------------------------------------


def test_an_unreachable_libvirtd_is_logged_and_virtdlmd_serves_on(
    make_node: Callable[..., Node],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    short_dir: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    uri = f"qemu+unix:///system?socket={short_dir}/no-libvirtd.sock"
    node = make_node(lockfailure_uri=uri)
    vm = start_vm(node, make_qemu, images["one.qcow2"], "vm-1", action="poweroff")
    node.fault(lockspace="stopped")
    (record,) = wait_actions(node, 1)
    assert record["outcome"].startswith(f"failed: cannot connect to {uri}: ")
    assert record["outcome"].endswith("; is libvirtd running? (systemctl status libvirtd)")
    assert domain_state(node.virt, vm.uuid) == "running"
    assert any(
        r.levelname == "ERROR" and "vm-1" in r.getMessage() and "cannot connect" in r.getMessage()
        for r in caplog.records
    )
    node.fault()
    wait_health(node, "ok")
    assert node.vdl.send(vm.acquire_request())["ok"]


OLD_STATUS_KEYS = {
    "version", "pid", "backend", "cluster", "lockspace", "node_id", "node_name", "socket",
    "owners", "locks", "uptime_s", "warning",
}  # fmt: skip


def test_status_shows_health_quorum_and_the_last_actions(
    make_node: Callable[..., Node],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = make_node()
    vm = start_vm(node, make_qemu, images["one.qcow2"], "vm-1", action="pause")
    healthy = node.vdl.status()
    assert set(healthy) >= OLD_STATUS_KEYS
    assert healthy["health"] == {
        "state": "ok", "detail": "", "since": None, "quorate": True,
        "quorum_detail": "model quorum", "lost": False, "lost_reason": "",
        "checked": healthy["health"]["checked"], "pending_releases": 0,
    }  # fmt: skip
    assert healthy["lockfailure"] == {"uri": TEST_URI, "unavailable": "", "actions": []}
    text = cli.format_status(healthy)
    assert "\nhealth     ok\nquorum     quorate (model quorum)\nactions    none" in text
    node.fault(lockspace="stopped")
    wait_actions(node, 1)
    assert cli.main(["--socket", node.vdl.socket, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    (action,) = status["lockfailure"]["actions"]
    assert set(action) == {"domain", "uuid", "action", "reason", "time", "outcome"}
    assert (action["domain"], action["uuid"], action["outcome"]) == ("vm-1", vm.uuid, "paused")
    assert cli.main(["--socket", node.vdl.socket, "status"]) == 0
    text = capsys.readouterr().out
    assert re.search(
        f"\nhealth     stopped: the model lockspace is stopped \\(as when dlm_controld dies\\) "
        f"\\(since {CLOCK}\\); LOCKS LOST: stopped: ",
        text,
    ), text
    assert re.search(
        f"\naction     {CLOCK} vm-1 pause: paused \\(lockspace libvirt on node-a: stopped: ", text
    ), text
