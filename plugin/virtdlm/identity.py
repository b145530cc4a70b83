"""Disk identity: which DLM resource name guards a disk image.

The rule (documented in README.md, "Disk identity"):

1. Resolve the path: symlinks and ``..`` go (``os.path.realpath``).
2. Find the mount that holds it in ``/proc/self/mountinfo`` (longest mount point prefix).
3. Name the file by *what is mounted*, not *where*:
   - network filesystems (nfs, nfs4, cifs, glusterfs, ceph, 9p): ``<fstype>:<source>``
     (e.g. ``nfs:server:/srv/export``), so every node naming the export the same way
     gets the same identity, wherever it is mounted;
   - block devices (the path itself is a block device): ``blk:<serial or wwid>`` from sysfs,
     a partition as ``blk:<its disk's serial or wwid>:part<N>``, else
     ``blk:<major>:<minor>`` (same host only);
   - other (local) filesystems: ``dev:<major>:<minor>`` of the mounted filesystem.
   plus the mount's *root* within that filesystem (the 4th mountinfo field, so bind
   mounts of a subtree agree) plus the path below the mount point.
4. Hash it: ``disk.`` + base32 of SHA-256, 57 bytes, within the DLM's 64-byte limit.

A path that does not exist (yet) is named by its normalised absolute path.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import stat
from dataclasses import dataclass

from .backends.base import MAX_RESOURCE_NAME_BYTES

NETWORK_FSTYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "glusterfs", "fuse.glusterfs", "ceph", "9p", "afs"}
)
MOUNTINFO_PATH = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    mount_id: int
    major_minor: str
    root: str
    mount_point: str
    fstype: str
    source: str


_OCTAL_RE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    if "\\" not in field:
        return field
    return _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), field)


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


@functools.lru_cache(maxsize=4)
def _parse_cached(text: str) -> dict[str, list[Mount]]:
    """Mounts by device (major:minor), parsed once per distinct mount table: the text is
    re-read on every request, so a mount or unmount is seen at once."""
    by_device: dict[str, list[Mount]] = {}
    for m in parse_mountinfo(text):
        by_device.setdefault(m.major_minor, []).append(m)
    return by_device


def _inside(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")


def find_mount(mounts: list[Mount], path: str) -> Mount | None:
    """The mount holding `path`: the longest mount point prefix, the last one mounted."""
    best: Mount | None = None
    for m in mounts:
        if _inside(path, m.mount_point) and (
            best is None or len(m.mount_point) >= len(best.mount_point)
        ):
            best = m
    return best


def identity_in_mount(mount: Mount, real_path: str) -> str:
    """The identity string of a regular file, given the mount it lives in."""
    mp = mount.mount_point
    below = real_path[len(mp) :].lstrip("/") if mp != "/" else real_path.lstrip("/")
    inner = os.path.normpath(mount.root.rstrip("/") + "/" + below) if below else mount.root
    if mount.fstype in NETWORK_FSTYPES:
        source = mount.source.rstrip("/") or "/"
        return f"{mount.fstype.removesuffix('4')}:{source}:{inner}"
    return f"dev:{mount.major_minor}:{inner}"


def _read_sys(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def _sysfs_disk_name(disk_dir: str) -> str:
    for leaf in ("device/wwid", "wwid", "device/serial", "serial"):
        value = _read_sys(os.path.join(disk_dir, leaf))
        if value:
            return value
    return ""


def block_device_identity(rdev: int, sys_root: str = "/sys") -> str:
    """``blk:<wwid or serial>`` of a whole disk; a partition is its disk's name plus
    ``:part<N>`` (a partition has no serial of its own in sysfs). Without either:
    ``blk:<major>:<minor>``, which holds on this host only."""
    major, minor = os.major(rdev), os.minor(rdev)
    sysdir = os.path.join(sys_root, "dev", "block", f"{major}:{minor}")
    part = _read_sys(os.path.join(sysdir, "partition"))
    if part:
        parent = os.path.dirname(os.path.realpath(sysdir))
        name = _sysfs_disk_name(parent)
        if name:
            return f"blk:{name}:part{part}"
    else:
        name = _sysfs_disk_name(sysdir)
        if name:
            return f"blk:{name}"
    return f"blk:{major}:{minor}"


def disk_identities(paths: list[str], mountinfo_path: str = MOUNTINFO_PATH) -> list[str]:
    """The identity strings of several disks (see the module docstring); mountinfo is read
    once for all of them."""
    by_device: dict[str, list[Mount]] | None = None
    out = []
    for path in paths:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            out.append(f"path:{os.path.normpath(os.path.abspath(path))}")
            continue
        if stat.S_ISBLK(st.st_mode):
            out.append(block_device_identity(st.st_rdev))
            continue
        if by_device is None:
            with open(mountinfo_path, encoding="utf-8") as f:
                by_device = _parse_cached(f.read())
        device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        mount = find_mount(by_device.get(device, []), real)
        out.append(f"path:{real}" if mount is None else identity_in_mount(mount, real))
    return out


def disk_identity(path: str, mountinfo_path: str = MOUNTINFO_PATH) -> str:
    """The identity string of the disk at `path` (see the module docstring)."""
    return disk_identities([path], mountinfo_path)[0]


def _digest(kind: str, identity: str) -> str:
    digest = hashlib.sha256(identity.encode()).digest()
    name = f"{kind}." + base64.b32encode(digest).decode().rstrip("=").lower()
    assert len(name.encode()) <= MAX_RESOURCE_NAME_BYTES, name
    return name


def disk_resource_name(identity: str) -> str:
    return _digest("disk", identity)


def lease_resource_name(lockspace: str, key: str) -> str:
    return _digest("lease", f"{lockspace}\x00{key}")
