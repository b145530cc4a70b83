"""A node for lock-health and lock-failure tests: virtdlmd in this process, its model DLM,
and the libvirt its on_lockfailure actions go through.

virtdlmd runs in this process (daemon_thread.py) over the in-process model DLM, whose lock
health a test sets (ModelDlm.set_health: lockspace stopped or gone, quorum lost, a fence
pending), and applies its actions through libvirt's real test driver, test:///default, which
keeps one state per process: the daemon's actuator threads and the test's own connection see
the same domains. QEMU is played by fake_qemu.py processes; each gets a test-driver domain
with its uuid. The health is read every HEALTH_INTERVAL_S here (2 s in production). The
fixtures (virt, make_node) are in conftest.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt
import pytest

from lab.wait import wait_for
from virtdlm.backends.model import ModelDlm
from virtdlm.errors import ErrorCode, RemoteError
from virtdlm.protocol import DiskSpec

from .daemon_thread import DaemonThread
from .procs import FakeQemu

TEST_URI = "test:///default"
NODE_ID = 1
HEALTH_INTERVAL_S = 0.05
QUORUM_GRACE_S = 1.0
SEEN_WITHIN_S = 3.0  # a change of health shows in status within this
ACTED_WITHIN_S = 5.0  # an action has its outcome within this
FAST_S = 1.0  # "at once": far below the request deadline (25 s) a blocked call would take
READINGS = 5  # "for a while": this many more health readings
DOMAIN_XML = (
    "<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>1024</memory>"
    "<os><type>hvm</type></os></domain>"
)
STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
}
CLOCK = r"\d\d:\d\d:\d\d"


@dataclass
class Node:
    """virtdlmd on node-a of a model DLM, and the libvirt its actions go through."""

    vdl: DaemonThread
    dlm: ModelDlm
    virt: Any  # libvirt.virConnect to test:///default

    def fault(self, **health: Any) -> None:
        """Set this node's lock health (no argument: healthy again)."""
        self.dlm.set_health(NODE_ID, **health)

    def health(self) -> dict[str, Any]:
        return dict(self.vdl.status()["health"])

    def actions(self) -> list[dict[str, Any]]:
        return list(self.vdl.status()["lockfailure"]["actions"])


def start_vm(
    node: Node,
    make_qemu: Callable[..., FakeQemu],
    path: str,
    name: str,
    action: str = "default",
    persistent: bool = True,
    readonly: bool = False,
) -> FakeQemu:
    """A QEMU registered with `action`, its domain running in libvirt, its disk locked."""
    vm = make_qemu(node.vdl.socket, name, [DiskSpec(path, readonly, shared=False)], action=action)
    xml = DOMAIN_XML.format(name=name, uuid=vm.uuid)
    if persistent:
        node.virt.defineXML(xml).create()
    else:
        node.virt.createXML(xml, 0)
    assert node.vdl.send(vm.acquire_request())["ok"]
    return vm


def domain_state(virt: Any, uuid: str) -> str:
    try:
        dom = virt.lookupByUUIDString(uuid)
    except libvirt.libvirtError:
        return "absent"
    return STATES.get(dom.state()[0], str(dom.state()))


def wait_health(node: Node, state: str, lost: bool | None = None) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        health = node.health()
        ok = health["state"] == state and (lost is None or health["lost"] == lost)
        return health if ok else None

    return wait_for(seen, SEEN_WITHIN_S, 0.02, f"health {state!r} (lost {lost})")


def wait_readings(node: Node, count: int = READINGS) -> None:
    """Let the daemon take `count` more health readings."""
    first = node.health()["checked"]
    wait_for(
        lambda: node.health()["checked"] >= first + count * HEALTH_INTERVAL_S,
        SEEN_WITHIN_S,
        0.02,
        f"{count} more health readings",
    )


def wait_actions(node: Node, count: int) -> list[dict[str, Any]]:
    """The daemon's last actions, once there are `count` and each has its outcome."""

    def done() -> list[dict[str, Any]] | None:
        actions = node.actions()
        finished = len(actions) == count and all(a["outcome"] != "pending" for a in actions)
        return actions if finished else None

    return wait_for(done, ACTED_WITHIN_S, 0.02, f"{count} lock-failure actions")


def refused_at_once(call: Callable[[], object]) -> RemoteError:
    __tracebackhide__ = True
    began = time.monotonic()
    with pytest.raises(RemoteError) as info:
        call()
    assert time.monotonic() - began < FAST_S, "refused at once, not after a DLM call"
    assert info.value.remote_code == ErrorCode.LOCKSPACE_UNAVAILABLE == 13
    assert info.value.remote_name == "LOCKSPACE_UNAVAILABLE"
    return info.value
