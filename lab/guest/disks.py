"""Read and wipe the sectors a writer guest leaves on a disk, past every cache.

A record must be read as the other node wrote it: NFS's close-to-open caching and the host's
buffer cache could show an old sector, so raw images and block devices are read with
O_DIRECT (into a page-aligned buffer), and a qcow2 image is first mapped (`qemu-img map`:
where guest offset 0 lives in the file) and then read the same way. Runs on a node (the
suite's on-node program) or on this host (the local tier); it needs only the standard
library, lab.command and lab.wait (and virtdlm, which lab.command imports).
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass

from ..command import run
from ..wait import LabError
from .writer import (
    COLLISION_LBA,
    RECORD_LBA,
    SECTOR_BYTES,
    Collision,
    Record,
    parse_collision,
    parse_record,
)

READ_BYTES = 4096  # LBA 0..7: the record and the collision marker, one aligned block
WIPE_BYTES = 16 * SECTOR_BYTES  # records, marker and the shareable slots 0..7
QEMU_IMG_TIMEOUT_S = 20.0


class DiskReadError(LabError):
    pass


@dataclass(frozen=True)
class Evidence:
    """What one disk shows: the last record at LBA 0 and a collision marker, if any."""

    path: str
    record: Record | None
    collision: Collision | None

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "record": None if self.record is None else self.record.__dict__,
            "collision": None
            if self.collision is None
            else {
                **{k: v for k, v in self.collision.__dict__.items() if k != "seen"},
                "seen": None if self.collision.seen is None else self.collision.seen.__dict__,
            },
        }


def evidence_from_json(data: dict[str, object]) -> Evidence:
    rec = data.get("record")
    coll = data.get("collision")
    collision = None
    if isinstance(coll, dict):
        seen = coll.get("seen")
        collision = Collision(
            str(coll["writer"]),
            int(coll["nonce"]),
            int(coll["counter"]),
            Record(**seen) if isinstance(seen, dict) else None,
        )
    return Evidence(str(data["path"]), Record(**rec) if isinstance(rec, dict) else None, collision)


def qcow2_data_offset(text: str, guest_offset: int = 0) -> int | None:
    """Where guest_offset lives in the file, from `qemu-img map --output=json`; None when
    that cluster was never written (it reads as zeros)."""
    for extent in json.loads(text):
        start, length = int(extent["start"]), int(extent["length"])
        if start <= guest_offset < start + length:
            if not extent.get("data") or "offset" not in extent:
                return None
            return int(extent["offset"]) + guest_offset - start
    return None


def _image_tool(argv: list[str], path: str) -> str:
    """Run a QEMU image tool on `path` through the lab's one command wrapper (deadline,
    process group); its stdout, or DiskReadError in the tool's own words."""
    try:
        result = run(argv, QEMU_IMG_TIMEOUT_S)
    except LabError as err:
        raise DiskReadError(f"{path}: {argv[0]}: {err}") from err
    if not result.ok:
        said = (result.stderr or result.stdout).strip()
        raise DiskReadError(f"{path}: {argv[0]} failed (rc {result.rc}): {said}")
    return result.stdout


def _file_offset(path: str) -> int | None:
    if not path.endswith(".qcow2"):
        return 0
    return qcow2_data_offset(
        _image_tool(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", path], path)
    )


def read_head(path: str, offsets: dict[str, int] | None = None) -> bytes:
    """The first READ_BYTES the guest sees on this disk, read past every cache. `offsets`
    remembers where a qcow2 image keeps them once written (a long-lived reader's cache:
    that cluster does not move until the image is wiped)."""
    offset = offsets.get(path) if offsets is not None else None
    if offset is None:
        offset = _file_offset(path)
        if offset is not None and offsets is not None and path.endswith(".qcow2"):
            offsets[path] = offset
    if offset is None:
        return bytes(READ_BYTES)
    buf = mmap.mmap(-1, READ_BYTES)  # page-aligned, as O_DIRECT wants
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            got = os.preadv(fd, [buf], offset)
        finally:
            os.close(fd)
        return bytes(buf[:got]).ljust(READ_BYTES, b"\0")
    except OSError as err:
        raise DiskReadError(f"{path}: {err.strerror}") from err
    finally:
        buf.close()


def evidence(path: str, offsets: dict[str, int] | None = None) -> Evidence:
    head = read_head(path, offsets)
    sector = slice(RECORD_LBA * SECTOR_BYTES, (RECORD_LBA + 1) * SECTOR_BYTES)
    marker = slice(COLLISION_LBA * SECTOR_BYTES, (COLLISION_LBA + 1) * SECTOR_BYTES)
    return Evidence(path, parse_record(head[sector]), parse_collision(head[marker]))


def wipe(path: str) -> None:
    """Zero what writers leave (records, marker, slots); nobody may have the disk open."""
    if path.endswith(".qcow2"):
        try:
            _image_tool(["qemu-io", "-f", "qcow2", "-c", f"write -z 0 {WIPE_BYTES}", path], path)
        except DiskReadError as err:
            raise DiskReadError(f"{err} (is a domain still using the disk?)") from err
        return
    buf = mmap.mmap(-1, WIPE_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        try:
            os.pwritev(fd, [buf], 0)
        finally:
            os.close(fd)
    except OSError as err:
        raise DiskReadError(f"{path}: {err.strerror}") from err
    finally:
        buf.close()
