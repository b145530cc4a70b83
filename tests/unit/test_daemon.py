"""virtdlmd as a real process: owners, modes, lifetimes, restarts, over the real socket.

Two daemons on one model server play node-a and node-b of a cluster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from lab.wait import wait_for
from virtdlm.owners import StateStore
from virtdlm.protocol import LeaseSpec, OwnerSpec, Request

from .conftest import disk
from .procs import DaemonProc, FakeQemu

RELEASE_DEADLINE_S = 1.0


def _held(daemon: DaemonProc) -> set[tuple[str, str, str]]:
    return {(lk["domain"], lk["path"], lk["mode"]) for lk in daemon.locks()}


def _assert_busy(reply: dict[str, Any], path: str, domain: str, node: str, mode: str) -> None:
    __tracebackhide__ = True
    assert reply["ok"] is False, reply
    assert (reply["code"], reply["error"]) == (6, "BUSY"), reply
    assert reply["resource"] == path
    assert reply["holder"] == {"domain": domain, "node": node, "mode": mode}, reply
    how = "exclusively" if mode == "EX" else "shared"
    assert reply["message"] == f"disk {path} is locked {how} by {domain} on {node}"


# -- item 2: modes per disk kind, idempotence, all or nothing ---------------------------


@pytest.mark.parametrize(
    ("kind", "flags", "mode"),
    [
        ("exclusive", {}, "EX"),
        ("shareable", {"shared": True}, "PR"),
        ("readonly", {"readonly": True}, None),
    ],
)
def test_disk_kind_decides_the_lock_mode(
    daemon: DaemonProc,
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    kind: str,
    flags: dict[str, bool],
    mode: str | None,
) -> None:
    path = images["one.qcow2"]
    vm = make_qemu(daemon.socket, "vm-1", [disk(path, **flags)])
    assert daemon.send(vm.acquire_request())["ok"]
    assert _held(daemon) == ({("vm-1", path, mode)} if mode else set())


def test_acquire_and_release_are_idempotent(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    vm = make_qemu(daemon.socket, "vm-1", [disk(images["one.qcow2"])])
    for _ in range(2):  # libvirt re-acquires on guest reboot
        assert daemon.send(vm.acquire_request())["ok"]
    assert len(daemon.locks()) == 1
    release = vm.release_request()
    for _ in range(2):  # libvirt releases twice on suspend
        assert daemon.send(release)["ok"]
    assert daemon.locks() == []


def test_refused_acquire_takes_none_and_keeps_what_was_held(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    one, two, share = images["one.qcow2"], images["two.qcow2"], images["share.raw"]
    vm1 = make_qemu(daemon.socket, "vm-1", [disk(one)])
    assert daemon.send(vm1.acquire_request())["ok"]
    vm2 = make_qemu(daemon.socket, "vm-2", [disk(share, shared=True)])
    assert daemon.send(vm2.acquire_request())["ok"]
    refused = daemon.send(vm2.acquire_request([disk(two), disk(one)]))
    _assert_busy(refused, one, "vm-1", "node-a", "EX")
    assert _held(daemon) == {("vm-1", one, "EX"), ("vm-2", share, "PR")}  # two.qcow2 not kept
    assert daemon.send(vm2.acquire_request([disk(two)]))["ok"]  # and it is free


def test_release_with_no_resources_releases_everything(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    vm = make_qemu(daemon.socket, "vm-1", [disk(images["one.qcow2"]), disk(images["two.qcow2"])])
    assert daemon.send(vm.acquire_request())["ok"]
    assert daemon.send(vm.release_request([]))["ok"]
    assert daemon.locks() == []


def test_same_image_through_symlink_and_dotdot_is_one_lock(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu], images: dict[str, str], short_dir: str
) -> None:
    one = images["one.qcow2"]
    link = os.path.join(short_dir, "link.qcow2")
    os.symlink(one, link)
    vm1 = make_qemu(daemon.socket, "vm-1", [disk(one)])
    assert daemon.send(vm1.acquire_request())["ok"]
    for alias in (link, os.path.join(short_dir, "..", os.path.basename(short_dir), "one.qcow2")):
        vm2 = make_qemu(daemon.socket, "vm-2", [disk(alias)])
        _assert_busy(daemon.send(vm2.acquire_request()), alias, "vm-1", "node-a", "EX")


def test_leases_lock_exclusively_by_lockspace_and_key(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu]
) -> None:
    lease = LeaseSpec(key="vm-1-lease", lockspace="ls1", path="/x", offset=0)
    vm1 = make_qemu(daemon.socket, "vm-1", [lease])
    assert daemon.send(vm1.acquire_request())["ok"]
    vm2 = make_qemu(daemon.socket, "vm-2", [lease])
    reply = daemon.send(vm2.acquire_request())
    assert reply["code"] == 6
    assert reply["message"] == "lease ls1/vm-1-lease is locked exclusively by vm-1 on node-a"


def test_require_lease_for_disks_refuses_rw_disks_without_lease(
    make_daemon: Callable[..., DaemonProc],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
) -> None:
    daemon = make_daemon(1, auto_disk_leases=0)
    vm = make_qemu(daemon.socket, "vm-1", [disk(images["one.qcow2"])])
    reply = daemon.send(vm.acquire_request())
    assert (reply["code"], reply["error"]) == (10, "POLICY")
    assert "require_lease_for_disks" in reply["message"]


# -- item 4: lifetime and peer checks ------------------------------------------------------


def test_killed_qemu_releases_its_locks_within_one_second(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    vm = make_qemu(
        daemon.socket, "vm-1", [disk(images["one.qcow2"]), disk(images["share.raw"], shared=True)]
    )
    assert daemon.send(vm.acquire_request())["ok"]
    assert len(daemon.locks()) == 2
    killed = time.monotonic()
    vm.kill()
    wait_for(lambda: daemon.locks() == [], RELEASE_DEADLINE_S, 0.01, "locks of killed QEMU")
    assert time.monotonic() - killed < RELEASE_DEADLINE_S
    assert "gone (" in daemon.log()


def test_unregistered_owner_is_watched_by_pidfd(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    vm = make_qemu(daemon.socket, "vm-1", [disk(images["one.qcow2"])], register=False)
    assert daemon.send(vm.acquire_request())["ok"]
    vm.kill()
    wait_for(lambda: daemon.locks() == [], RELEASE_DEADLINE_S, 0.01, "pidfd release")
    assert "gone (process exited)" in daemon.log()


def test_register_for_another_pid_is_denied(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu]
) -> None:
    vm = make_qemu(daemon.socket, "vm-1", [], register=False)
    reply = daemon.send(Request("register", vm.owner, (), restrict=True))
    assert (reply["code"], reply["error"]) == (4, "DENIED")
    assert f"claimed pid {vm.pid} is not the caller's pid {os.getpid()}" in reply["message"]


def test_acquire_for_a_dead_pid_is_refused(daemon: DaemonProc, images: dict[str, str]) -> None:
    owner = OwnerSpec(uuid="00000000-0000-0000-0000-000000000001", name="ghost", id=-1, pid=4194000)
    reply = daemon.send(Request("acquire", owner, (disk(images["one.qcow2"]),)))
    assert (reply["code"], reply["error"]) == (11, "NO_SUCH_PROCESS")
    assert daemon.locks() == []


# -- items 2 + 7 across nodes: the cluster view and a daemon restart --------------------------


def _two_nodes_vm1_on_a(
    make_daemon: Callable[..., DaemonProc],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
) -> tuple[DaemonProc, DaemonProc, FakeQemu]:
    """Two daemons as node-a and node-b; vm-1 on node-a writes one.qcow2, shares share.raw."""
    node_a, node_b = make_daemon(1), make_daemon(2)
    one, share = images["one.qcow2"], images["share.raw"]
    vm1 = make_qemu(node_a.socket, "vm-1", [disk(one), disk(share, shared=True)])
    assert node_a.send(vm1.acquire_request())["ok"]
    return node_a, node_b, vm1


def test_other_node_is_refused_with_the_holder_from_the_lvb(
    make_daemon: Callable[..., DaemonProc],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
) -> None:
    node_a, node_b, vm1 = _two_nodes_vm1_on_a(make_daemon, make_qemu, images)
    one, share = images["one.qcow2"], images["share.raw"]
    vm2 = make_qemu(node_b.socket, "vm-2", [disk(one)])
    _assert_busy(node_b.send(vm2.acquire_request()), one, "vm-1", "node-a", "EX")
    vm4 = make_qemu(node_b.socket, "vm-4", [disk(share, shared=True)])
    assert node_b.send(vm4.acquire_request())["ok"]
    vm3 = make_qemu(node_b.socket, "vm-3", [disk(one, readonly=True)])
    assert node_b.send(vm3.acquire_request())["ok"]


def test_daemon_kill9_keeps_every_lock_and_restart_adopts_them(
    make_daemon: Callable[..., DaemonProc],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
) -> None:
    node_a, node_b, vm1 = _two_nodes_vm1_on_a(make_daemon, make_qemu, images)
    one = images["one.qcow2"]
    dead = make_qemu(node_a.socket, "vm-dead", [disk(images["two.qcow2"])])
    assert node_a.send(dead.acquire_request())["ok"]
    before = _held(node_a)
    node_a.kill9()
    dead.kill()  # dies while node-a's daemon is down: nobody is told
    vm2 = make_qemu(node_b.socket, "vm-2", [disk(one)])
    _assert_busy(node_b.send(vm2.acquire_request()), one, "vm-1", "node-a", "EX")  # orphan holds
    node_a.start()
    assert _held(node_a) == before - {("vm-dead", images["two.qcow2"], "EX")}
    _assert_busy(node_b.send(vm2.acquire_request()), one, "vm-1", "node-a", "EX")
    assert node_b.send(vm2.acquire_request([disk(images["two.qcow2"])]))["ok"]  # purged
    vm1.kill()  # the re-adopted owner is watched by pidfd
    wait_for(lambda: node_a.locks() == [], RELEASE_DEADLINE_S, 0.01, "release after restart")
    assert node_b.send(vm2.acquire_request())["ok"]


def test_sigterm_keeps_locks_for_the_next_start(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    vm = make_qemu(daemon.socket, "vm-1", [disk(images["one.qcow2"])])
    assert daemon.send(vm.acquire_request())["ok"]
    daemon.stop()  # with vm-1's registration connection still open
    assert "locks of 1 owners stay held" in daemon.log()
    assert "Traceback" not in daemon.log()
    daemon.start()
    assert _held(daemon) == {("vm-1", images["one.qcow2"], "EX")}


# A state file as virtdlmd wrote it before the owner registry moved out of server.py: a
# restart must go on adopting the locks recorded by an older daemon.
STATE_UUID = "6a1f0c4e-3b5d-4f6a-9c1e-2d3b4c5d6e7f"
STATE_FILE_V1 = (
    '{"version":1,"uuid":"6a1f0c4e-3b5d-4f6a-9c1e-2d3b4c5d6e7f","name":"vm-1","pid":4242,'
    '"start_time":123456,"locks":[{"resource":"disk.abc","kind":"disk","label":'
    '"/srv/one.qcow2","mode":"EX"},{"resource":"lease.def","kind":"lease","label":"ls1/key",'
    '"mode":"EX"},{"resource":"disk.ghi","kind":"disk","label":"/srv/share.raw","mode":"PR"}]}'
)


def test_state_file_of_an_older_daemon_is_read_and_written_back_unchanged(short_dir: str) -> None:
    store = StateStore(short_dir)
    path = os.path.join(store.dir, f"{STATE_UUID}-4242.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(STATE_FILE_V1)
    (recorded,) = store.load()
    owner = recorded.owner
    assert (owner.uuid, owner.name, owner.pid) == (STATE_UUID, "vm-1", 4242)
    assert owner.start_time == 123456
    assert [(lk.resource, lk.kind, lk.label, lk.mode.name) for lk in recorded.locks] == [
        ("disk.abc", "disk", "/srv/one.qcow2", "EX"),
        ("lease.def", "lease", "ls1/key", "EX"),
        ("disk.ghi", "disk", "/srv/share.raw", "PR"),
    ]
    assert all(lk.owner is owner for lk in recorded.locks)
    store.save(owner, recorded.locks)
    with open(path, encoding="utf-8") as f:
        assert f.read() == STATE_FILE_V1


def test_state_file_names_an_action_other_than_the_default(short_dir: str) -> None:
    store = StateStore(short_dir)
    path = os.path.join(store.dir, f"{STATE_UUID}-4242.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(STATE_FILE_V1)
    (recorded,) = store.load()
    recorded.owner.action = "pause"
    store.save(recorded.owner, recorded.locks)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text == STATE_FILE_V1.replace(',"locks"', ',"action":"pause","locks"')
    (again,) = store.load()
    assert again.owner.action == "pause"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace('"pause"', '"reboot"'))
    assert store.load() == [], "an unknown action is refused: the file is set aside"
    assert os.path.exists(f"{path}.bad")
