"""The lab's box: build it from Debian packages (lab/box/build-box), or take the one the
settings name; prune the boxes of older recipes, as vagrant boxes and libvirt base volumes.

Which boxes and volumes to remove is decided by pure functions (tested on names); vagrant
is asked through lab.nodes.vagrant (python-vagrant), libvirt through lab.host.objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..command import check
from ..nodes.vagrant import Box, Vagrant
from ..settings import BOX_NAME_PREFIX, REPO
from .access import Runner, as_root
from .objects import HostObjects

BUILD_TIMEOUT_S = 1800.0
BUILD_BOX = os.path.join(REPO, "lab", "box", "build-box")


def build(box_dir: str, who: Runner) -> str:
    """The box directory: the configured one, else build-box's (cached by recipe digest)."""
    if box_dir:
        return box_dir
    # its steps reach the terminal as they happen; its stdout's last line is the directory
    out = check(as_root([BUILD_BOX], who), timeout_s=BUILD_TIMEOUT_S, show_progress=True)
    return out.stdout.strip().splitlines()[-1]


def stale_boxes(boxes: Iterable[Box], keep: str | None) -> list[Box]:
    """The lab's boxes other than `keep` (all of them when keep is None)."""
    return sorted(
        (b for b in boxes if b.name.startswith(BOX_NAME_PREFIX) and b.name != keep),
        key=lambda b: (b.name, b.provider, b.version),
    )


def base_volumes(volumes: Iterable[str], box_name: str) -> list[str]:
    """vagrant-libvirt's base volumes of one box (`<box>_vagrant_box_image_<version>...`)."""
    return sorted(v for v in volumes if v.startswith(f"{box_name}_vagrant_box_image"))


def prune(vagrant: Vagrant, keep: str | None) -> list[str]:
    """Remove the boxes of older recipes and their base volumes; the box names removed.

    python-vagrant's box_remove names the provider but not a version: it removes a box that
    has one version, which is how make lab adds them (a file URL, no version).
    """
    stale = stale_boxes(vagrant.box_list(), keep)
    if not stale:
        return []
    for box in stale:
        vagrant.box_remove(box.name, box.provider)
    with HostObjects() as host:
        volumes = host.volumes()
        for box in stale:
            for vol in base_volumes(volumes, box.name):
                host.delete_volume(vol)
    return sorted({b.name for b in stale})
