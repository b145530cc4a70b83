"""Disk identity: which DLM resource name guards a disk image.

The rule (documented in README.md, "Disk identity"):

1. Resolve the path: symlinks and ``..`` go (``os.path.realpath``).
2. Find the mount that holds it in ``/proc/self/mountinfo`` (longest mount point prefix).
3. Name the file by *what is mounted*, not *where*:
   - network filesystems (nfs, nfs4, cifs, glusterfs, ceph, 9p): ``<fstype>:<source>``
     (e.g. ``nfs:server:/srv/export``), so every node naming the export the same way
     gets the same identity, wherever it is mounted;
   - block devices (the path itself is a block device): ``blk:<serial or wwid>`` from sysfs,
     else ``blk:<major>:<minor>`` (same host only);
   - other (local) filesystems: ``dev:<major>:<minor>`` of the mounted filesystem.
   plus the mount's *root* within that filesystem (the 4th mountinfo field, so bind
   mounts of a subtree agree) plus the path below the mount point.
4. Hash it: ``disk.`` + base32 of SHA-256, 57 bytes, within the DLM's 64-byte limit.

A path that does not exist (yet) is named by its normalised absolute path.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass

NETWORK_FSTYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "glusterfs", "fuse.glusterfs", "ceph", "9p", "afs"}
)
MOUNTINFO_PATH = "/proc/self/mountinfo"
MAX_RESOURCE_NAME_BYTES = 64


@dataclass(frozen=True)
class Mount:
    mount_id: int
    major_minor: str
    root: str
    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/<pid>/mountinfo (see proc(5)); later lines shadow earlier ones."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 5 or len(parts) < sep + 3:
            continue
        mounts.append(
            Mount(
                mount_id=int(parts[0]),
                major_minor=parts[2],
                root=_unescape(parts[3]),
                mount_point=_unescape(parts[4]),
                fstype=parts[sep + 1],
                source=_unescape(parts[sep + 2]),
            )
        )
    return mounts


def find_mount(mounts: list[Mount], path: str) -> Mount | None:
    """The mount holding `path`: the longest mount point prefix, the last one mounted."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mount_point
        inside = path == mp or path.startswith(mp.rstrip("/") + "/") or mp == "/"
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


def identity_in_mount(mount: Mount, real_path: str) -> str:
    """The identity string of a regular file, given the mount it lives in."""
    below = os.path.relpath(real_path, mount.mount_point)
    inner = os.path.normpath(os.path.join(mount.root, below))
    if mount.fstype in NETWORK_FSTYPES:
        source = mount.source.rstrip("/") or "/"
        return f"{mount.fstype.removesuffix('4')}:{source}:{inner}"
    return f"dev:{mount.major_minor}:{inner}"


def _block_device_identity(real_path: str, rdev: int) -> str:
    major, minor = os.major(rdev), os.minor(rdev)
    sysdir = f"/sys/dev/block/{major}:{minor}"
    for leaf in ("device/wwid", "wwid", "device/serial", "serial"):
        try:
            with open(os.path.join(sysdir, leaf), encoding="utf-8") as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return f"blk:{value}"
    return f"blk:{major}:{minor}"


def disk_identity(path: str, mountinfo_path: str = MOUNTINFO_PATH) -> str:
    """The identity string of the disk at `path` (see the module docstring)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return f"path:{os.path.normpath(os.path.abspath(path))}"
    if stat.S_ISBLK(st.st_mode):
        return _block_device_identity(real, st.st_rdev)
    with open(mountinfo_path, encoding="utf-8") as f:
        mount = find_mount(parse_mountinfo(f.read()), real)
    if mount is None:
        return f"path:{real}"
    return identity_in_mount(mount, real)


def _digest(kind: str, identity: str) -> str:
    digest = hashlib.sha256(identity.encode()).digest()
    name = f"{kind}." + base64.b32encode(digest).decode().rstrip("=").lower()
    assert len(name.encode()) <= MAX_RESOURCE_NAME_BYTES, name
    return name


def disk_resource_name(identity: str) -> str:
    return _digest("disk", identity)


def lease_resource_name(lockspace: str, key: str) -> str:
    return _digest("lease", f"{lockspace}\x00{key}")
