"""The host side of the two-node lab, decided on values: who may run it, which libvirt
objects and boxes go, and how the host's own daemons are found."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.command import alive
from lab.host.access import Runner, as_root, refusal
from lab.host.box import base_volumes, stale_boxes
from lab.host.libvirtd import host_daemon_pid, user_can_rw
from lab.host.objects import foreign_leftovers, owner_prefix, with_prefix
from lab.nodes.vagrant import Box
from lab.wait import LabError, wait_for

ROOT = Runner("root", True, False, frozenset({"root"}), frozenset(), "")
SUDOER = Runner("ann", False, True, frozenset({"ann"}), frozenset(), "")
USER = Runner("ann", False, False, frozenset({"ann"}), frozenset(), "")
MEMBER = Runner("ann", False, False, frozenset({"ann", "libvirt"}), frozenset({"libvirt"}), "")
NEW_MEMBER = Runner("ann", False, False, frozenset({"ann"}), frozenset({"libvirt"}), "")


@pytest.mark.parametrize(
    ("who", "box_dir", "building", "says"),
    [
        (ROOT, "", True, None),
        (SUDOER, "", True, None),
        (MEMBER, "/var/lib/virtdlm/boxes/0a1b", True, None),
        (
            USER,
            "",
            True,
            ["sudo make lab", "membership of group libvirt", "sudo lab/box/build-box"],
        ),
        (MEMBER, "", True, ["sudo make lab", "a box built by root"]),
        (NEW_MEMBER, "/b", True, ["this session is not: log in again"]),
        (USER, "", False, ["membership of group libvirt"]),
        (MEMBER, "", False, None),
    ],
    ids=[
        "root",
        "passwordless-sudo",
        "libvirt-member-with-a-box",
        "plain-user",
        "member-without-a-box",
        "member-not-yet-logged-in-again",
        "plain-user-destroying",
        "member-destroying",
    ],
)
def test_who_may_run_the_lab(
    who: Runner, box_dir: str, building: bool, says: list[str] | None
) -> None:
    why = refusal(
        Runner(who.user, who.root, who.sudo, who.groups, who.listed_in, box_dir), building
    )
    if says is None:
        assert why is None
    else:
        assert why is not None and all(s in why for s in says), why
        assert why.startswith("the lab runs as ann, not root")


def test_root_steps_go_through_sudo_only_for_a_sudoer() -> None:
    assert as_root(["libvirtd", "-d"], ROOT) == ["libvirtd", "-d"]
    assert as_root(["libvirtd", "-d"], SUDOER) == ["sudo", "-n", "libvirtd", "-d"]


def test_foreign_leftovers_go_unless_their_lab_runs() -> None:
    ours = "virtdlm-aaaaaa-"
    nets = ["default", "virtdlm-aaaaaa-mgmt", "virtdlm-bbbbbb-mgmt", "virtdlm-bbbbbb-cluster"]
    assert foreign_leftovers(nets, ["other-vm"], ours) == [
        "virtdlm-bbbbbb-cluster",
        "virtdlm-bbbbbb-mgmt",
    ]
    with pytest.raises(LabError, match=r"another virtdlm lab \(virtdlm-bbbbbb-\*\) is running"):
        foreign_leftovers(nets, ["virtdlm-bbbbbb-node-a"], ours)
    assert owner_prefix("virtdlm-bbbbbb-cluster") == "virtdlm-bbbbbb-"
    assert with_prefix(["b-1", "a-1", "b-0"], "b-") == ["b-0", "b-1"]


def test_only_older_recipes_boxes_and_their_base_volumes_go() -> None:
    boxes = [
        Box("virtdlm-debian12-new", "libvirt", "0"),
        Box("virtdlm-debian12-old", "libvirt", "0"),
        Box("debian/bookworm64", "libvirt", "12"),
    ]
    assert stale_boxes(boxes, keep="virtdlm-debian12-new") == [boxes[1]]
    assert stale_boxes(boxes, keep=None) == boxes[:2]
    volumes = [
        "virtdlm-debian12-old_vagrant_box_image_0_box.img",
        "virtdlm-debian12-new_vagrant_box_image_0_box.img",
        "virtdlm-1a2b3c-node-a.img",
    ]
    assert base_volumes(volumes, "virtdlm-debian12-old") == [volumes[0]]


def test_the_host_daemon_is_found_by_its_pid_file_never_by_name_or_as_a_zombie(
    tmp_path: Path,
) -> None:
    """The local tier's libvirtd, just stopped, lingers as a zombie named "libvirtd" under
    an init that reaps late; mistaking it for the host's daemon left the host without one."""
    fake = tmp_path / "virtlogd"
    fake.symlink_to("/bin/sleep")  # its comm is "virtlogd"
    pidfile = tmp_path / "virtlogd.pid"
    assert host_daemon_pid("virtlogd", str(tmp_path)) is None  # no pid file
    live = subprocess.Popen([str(fake), "30"])
    other = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen([str(fake), "0"])
    try:
        pidfile.write_text(f"{live.pid}\n")
        assert host_daemon_pid("virtlogd", str(tmp_path)) == live.pid
        pidfile.write_text(f"{other.pid}\n")  # a reused pid now runs something else
        assert host_daemon_pid("virtlogd", str(tmp_path)) is None
        wait_for(lambda: not alive(zombie.pid), 10, 0.01, "the child to exit (unreaped)")
        pidfile.write_text(f"{zombie.pid}\n")  # exited, not yet reaped
        assert host_daemon_pid("virtlogd", str(tmp_path)) is None
        pidfile.write_text("garbage\n")
        assert host_daemon_pid("virtlogd", str(tmp_path)) is None
    finally:
        for proc in (live, other, zombie):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("mode", "owner", "group", "can"),
    [
        (0o660, 0, 107, True),  # root:kvm 0660, the QEMU user in kvm: Debian's udev rule
        (0o660, 0, 111, False),  # another group (a container's device node): libvirt re-probes
        (0o666, 0, 111, True),  # world read-write
        (0o640, 0, 107, False),  # the group may only read
        (0o600, 64055, 111, True),  # the user owns it
    ],
)
def test_whether_the_qemu_user_can_open_dev_kvm(
    mode: int, owner: int, group: int, can: bool
) -> None:
    assert user_can_rw(0o20000 | mode, owner, group, 64055, {107, 64055}) is can
