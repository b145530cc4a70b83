"""Disk identity: one image, one resource name, whatever path reaches it (item 3)."""

from __future__ import annotations

import os

import pytest

from virtdlm.identity import (
    block_device_identity,
    disk_identity,
    disk_resource_name,
    find_mount,
    identity_in_mount,
    lease_resource_name,
    parse_mountinfo,
)

# Captured /proc/self/mountinfo lines: node-a mounts the export at /var/lib/libvirt/images,
# node-b at /srv/images; a local ext4 with a bind mount of its subtree /data/vm at /vm.
NODE_A = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
98 22 0:52 / /var/lib/libvirt/images rw,relatime shared:60 - nfs 192.168.56.11:/srv/images rw,vers=3
"""
NODE_B = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
101 22 0:49 / /srv/images rw,relatime shared:61 - nfs4 192.168.56.11:/srv/images/ rw,vers=4.2
"""
BIND = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 254:1 /data/vm /vm rw,relatime shared:1 - ext4 /dev/vda1 rw
41 22 0:40 / /with\\040space rw - tmpfs tmpfs rw
"""


def _ident(mountinfo: str, path: str) -> str:
    mount = find_mount(parse_mountinfo(mountinfo), path)
    assert mount is not None
    return identity_in_mount(mount, path)


def test_same_nfs_export_at_different_mount_points_is_one_identity() -> None:
    a = _ident(NODE_A, "/var/lib/libvirt/images/one.qcow2")
    b = _ident(NODE_B, "/srv/images/one.qcow2")
    assert a == b == "nfs:192.168.56.11:/srv/images:/one.qcow2"


def test_bind_mount_of_a_subtree_is_the_same_file() -> None:
    assert _ident(BIND, "/vm/one.qcow2") == _ident(BIND, "/data/vm/one.qcow2")
    assert _ident(BIND, "/vm/one.qcow2") == "dev:254:1:/data/vm/one.qcow2"


def test_mountinfo_octal_escapes_are_decoded() -> None:
    assert _ident(BIND, "/with space/a.img") == "dev:0:40:/a.img"


def test_different_files_differ() -> None:
    assert _ident(NODE_A, "/var/lib/libvirt/images/one.qcow2") != _ident(
        NODE_A, "/var/lib/libvirt/images/two.qcow2"
    )


def test_symlinks_and_dotdot_resolve_to_the_real_file(tmp_path: os.PathLike[str]) -> None:
    real = os.path.join(tmp_path, "one.qcow2")
    open(real, "wb").close()
    link = os.path.join(tmp_path, "alias.qcow2")
    os.symlink(real, link)
    dotted = os.path.join(tmp_path, "..", os.path.basename(str(tmp_path)), "one.qcow2")
    assert disk_identity(real) == disk_identity(link) == disk_identity(dotted)


def test_missing_file_is_named_by_its_normalised_path() -> None:
    assert disk_identity("/no/such/../such/file.img") == "path:/no/such/file.img"


@pytest.mark.parametrize("identity", ["nfs:h:/e:/one.qcow2", "x" * 5000])
def test_resource_names_fit_the_dlm_limit(identity: str) -> None:
    name = disk_resource_name(identity)
    assert name.startswith("disk.") and len(name.encode()) <= 64
    assert name == disk_resource_name(identity)


def test_lease_names_separate_lockspace_and_key() -> None:
    assert lease_resource_name("a", "bc") != lease_resource_name("ab", "c")
    assert len(lease_resource_name("ls", "k" * 256).encode()) <= 64


def _fake_sysfs(root: str) -> None:
    """sysfs as a virtio disk vdb (serial virtdlm-shared) with two partitions shows it."""
    disk = os.path.join(root, "devices", "pci0000:00", "virtio5", "block", "vdb")
    for rel, text in {
        "serial": "virtdlm-shared\n",
        "vdb1/partition": "1\n",
        "vdb2/partition": "2\n",
    }.items():
        os.makedirs(os.path.dirname(os.path.join(disk, rel)), exist_ok=True)
        with open(os.path.join(disk, rel), "w") as f:
            f.write(text)
    os.makedirs(os.path.join(root, "dev", "block"))
    for dev, rel in {"254:16": "", "254:17": "vdb1", "254:18": "vdb2"}.items():
        os.symlink(os.path.join(disk, rel), os.path.join(root, "dev", "block", dev))


def test_a_partition_is_named_by_its_disks_serial_and_its_number(tmp_path) -> None:
    root = str(tmp_path)
    _fake_sysfs(root)
    assert block_device_identity(os.makedev(254, 16), root) == "blk:virtdlm-shared"
    assert block_device_identity(os.makedev(254, 17), root) == "blk:virtdlm-shared:part1"
    assert block_device_identity(os.makedev(254, 18), root) == "blk:virtdlm-shared:part2"


def test_a_block_device_sysfs_cannot_name_falls_back_to_major_minor(tmp_path) -> None:
    assert block_device_identity(os.makedev(7, 3), str(tmp_path)) == "blk:7:3"
