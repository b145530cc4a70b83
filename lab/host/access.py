"""Who runs the two-node lab, and may they? Decided before make lab touches anything.

The lab needs root for three things: installing host packages, building the box
(debootstrap, chroot) and starting the host's libvirtd when no init runs it. Root, or a
user with passwordless sudo, can do all three (the lab runs those steps through
``sudo -n``). Anyone else needs qemu:///system (group libvirt), a box built by root
(settings: box_dir), and a running libvirtd; when they lack one, make lab stops at once
and says what to do, instead of failing later with a misleading symptom.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from ..command import run
from ..wait import LabError

LIBVIRT_GROUP = "libvirt"
SUDO_PROBE_TIMEOUT_S = 10.0


class AccessDenied(LabError):
    pass


@dataclass(frozen=True)
class Runner:
    user: str
    root: bool
    sudo: bool  # `sudo -n true` succeeds: sudo without a password
    groups: frozenset[str]  # the groups this process has
    listed_in: frozenset[str]  # the groups /etc/group lists the user in (after a new login)
    box_dir: str  # the settings' box_dir: "" means make lab builds the box


def refusal(who: Runner, building_box: bool = True) -> str | None:
    """Why `who` cannot run the lab, with what to do; None when they can.

    `building_box`: make lab (which may build the box), not just make lab-destroy."""
    if who.root or who.sudo:
        return None
    needs = []
    if LIBVIRT_GROUP not in who.groups:
        if LIBVIRT_GROUP in who.listed_in:
            needs.append(
                f"you are in group {LIBVIRT_GROUP} but this session is not: log in again "
                f"(or run `newgrp {LIBVIRT_GROUP}`)"
            )
        else:
            needs.append(
                f"access to qemu:///system: membership of group {LIBVIRT_GROUP} "
                f"(`sudo adduser {who.user} {LIBVIRT_GROUP}`, then log in again)"
            )
    if building_box and not who.box_dir:
        needs.append(
            "a box built by root: `sudo lab/box/build-box`, then "
            "`VIRTDLM_LAB_BOX_DIR=<the directory it prints> make lab`"
        )
    if not needs:
        return None
    return (
        f"the lab runs as {who.user}, not root, and sudo asks {who.user} for a password: "
        f"run `sudo make lab` (or `sudo make lab-destroy`), or give {who.user} what the lab "
        "needs without root: "
        + "; ".join(needs)
        + "; and the host's libvirtd running (`sudo systemctl start libvirtd`)"
    )


def as_root(argv: Sequence[str], who: Runner) -> list[str]:
    """argv for a step that needs root: as is for root, through `sudo -n` for a sudoer."""
    return list(argv) if who.root or not who.sudo else ["sudo", "-n", *argv]


def _passwordless_sudo() -> bool:
    if shutil.which("sudo") is None:
        return False
    return run(["sudo", "-n", "true"], timeout_s=SUDO_PROBE_TIMEOUT_S).ok


def runner(box_dir: str) -> Runner:
    """The facts about the user running this process."""
    uid = os.geteuid()
    user = pwd.getpwuid(uid).pw_name
    groups = set()
    for gid in {*os.getgroups(), os.getegid()}:
        try:
            groups.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue  # a gid without a name: not one the lab asks for
    listed = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    return Runner(
        user,
        uid == 0,
        uid != 0 and _passwordless_sudo(),
        frozenset(groups),
        frozenset(listed),
        box_dir,
    )


def check(who: Runner, building_box: bool = True) -> None:
    """Raise AccessDenied, saying what to do, when `who` cannot run the lab."""
    why = refusal(who, building_box)
    if why is not None:
        raise AccessDenied(why)
