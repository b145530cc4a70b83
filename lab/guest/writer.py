"""The writer guest's two sides on the host: its boot disk and configuration, and reading
what it wrote.

The guest program (guest/writer/writer.S, built by `make guest` into build/writer.bin) is
loaded by SeaBIOS from a read-only boot disk that every writer domain shares. Each domain
tells it who it is and what its disks are through QEMU's fw_cfg (libvirt's
``<sysinfo type='fwcfg'>``): the string "MODES:SLOT:ID", one mode letter per data disk in
BIOS order (the domain's data disks in target order after the boot disk): "x" exclusive,
"s" shareable, "r" read-only. What the guest leaves on a data disk:

    LBA 0          an exclusive disk's record (the last writer's)
    LBA 1          a collision marker, if a writer read back another's record
    LBA 8 + slot   a shareable disk's record of the writer with that slot

Everything here is pure (values in, bytes or records out), so it is tested on built sectors.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from ..wait import LabError

SECTOR_BYTES = 512
# The tree's root, found from here: this module also runs inside the nodes (no lab.settings).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WRITER_BIN = os.path.join(REPO, "build", "writer.bin")
FWCFG_NAME = "opt/org.virtdlm/writer"
BOOT_IMAGE_BYTES = 1 << 20
RECORD_MAGIC = b"VDLMREC1"
COLLISION_MAGIC = b"VDLMCOLL"
ID_BYTES = 16
RECORD_BYTES = 36
RECORD_LBA = 0
COLLISION_LBA = 1
SHARED_BASE_LBA = 8
MAX_SLOT = 9  # one character, "0".."9"
MODES = {"rw": "x", "shareable": "s", "ro": "r"}
MAX_DISKS = 16  # virtio-blk disks SeaBIOS maps to BIOS drives, with room to spare


class WriterError(LabError):
    pass


@dataclass(frozen=True)
class Record:
    writer: str  # the writer id: the domain's name, at most 16 bytes
    nonce: int  # per boot: a reset or a restart of the domain changes it
    counter: int  # loops done since boot
    checksum_ok: bool


@dataclass(frozen=True)
class Collision:
    writer: str  # who saw it
    nonce: int
    counter: int
    seen: Record | None  # what it read back instead of its own record


def fwcfg_config(writer: str, modes: Sequence[str], slot: int = 0) -> str:
    """The writer's configuration string: mode letters, slot, id ("xs:0:vm-1")."""
    raw_id = writer.encode()
    if not raw_id or len(raw_id) > ID_BYTES or not writer.isprintable() or ":" in writer:
        raise WriterError(f"writer id {writer!r} must be 1..{ID_BYTES} printable bytes, no ':'")
    if not 0 <= slot <= MAX_SLOT:
        raise WriterError(f"writer slot {slot} is not in 0..{MAX_SLOT}")
    if len(modes) > MAX_DISKS:
        raise WriterError(f"{len(modes)} data disks: the writer handles at most {MAX_DISKS}")
    letters = ""
    for mode in modes:
        if mode not in MODES:
            raise WriterError(f"disk mode {mode!r} is not one of {', '.join(MODES)}")
        letters += MODES[mode]
    return f"{letters}:{chr(ord('0') + slot)}:{writer}"


def sysinfo_xml(writer: str, modes: Sequence[str], slot: int = 0) -> str:
    """The domain XML element that hands the writer its configuration."""
    value = escape(fwcfg_config(writer, modes, slot))
    return f"<sysinfo type='fwcfg'><entry name='{FWCFG_NAME}'>{value}</entry></sysinfo>"


def boot_image(program: bytes = b"") -> bytes:
    """The shared boot disk's bytes: the writer program, padded to BOOT_IMAGE_BYTES (SeaBIOS
    does not boot from a disk of a few sectors)."""
    if not program:
        try:
            with open(WRITER_BIN, "rb") as f:
                program = f.read()
        except OSError as err:
            raise WriterError(f"{WRITER_BIN}: {err.strerror}: run `make guest` first") from err
    if len(program) % SECTOR_BYTES or program[SECTOR_BYTES - 2 : SECTOR_BYTES] != b"\x55\xaa":
        raise WriterError("the writer program does not start with a boot sector")
    return program.ljust(BOOT_IMAGE_BYTES, b"\0")


def _checksum(head: bytes) -> int:
    value = 0
    for (word,) in struct.iter_unpack("<I", head[:32]):
        value ^= word
    return value


def parse_record(sector: bytes) -> Record | None:
    """The record at the start of a sector, or None if no writer ever wrote there."""
    if len(sector) < RECORD_BYTES or sector[:8] != RECORD_MAGIC:
        return None
    nonce, counter, checksum = struct.unpack_from("<III", sector, 24)
    writer = sector[8 : 8 + ID_BYTES].rstrip(b"\0").decode(errors="replace")
    return Record(writer, nonce, counter, checksum == _checksum(sector))


def parse_collision(sector: bytes) -> Collision | None:
    """The collision marker a writer leaves at LBA 1, or None."""
    if len(sector) < 64 + RECORD_BYTES or sector[:8] != COLLISION_MAGIC:
        return None
    nonce, counter = struct.unpack_from("<II", sector, 24)
    writer = sector[8 : 8 + ID_BYTES].rstrip(b"\0").decode(errors="replace")
    return Collision(writer, nonce, counter, parse_record(sector[64:]))


def shared_slot_lba(slot: int) -> int:
    return SHARED_BASE_LBA + slot


def main(argv: Sequence[str] | None = None) -> int:
    """python3 -m lab.guest.writer boot-image OUT: the shared boot disk from build/writer.bin."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "boot-image":
        sys.stderr.write("usage: python3 -m lab.guest.writer boot-image OUT\n")
        return 2
    try:
        image = boot_image()
    except WriterError as err:
        sys.stderr.write(f"{err}\n")
        return 1
    with open(args[1], "wb") as f:
        f.write(image)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
