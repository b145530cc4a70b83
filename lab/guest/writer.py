"""The writer guest's two sides on the host: its boot disk, and reading what it wrote.

The guest program (guest/writer/writer.S, built by `make guest` into build/writer.bin) is
a boot sector; the boot disk is that sector followed by one configuration sector that
names the writer and says, per data disk in BIOS order (0x81, 0x82, ...), whether it is
exclusive ("x"), shareable ("s") or read-only ("r"). Disk layout the guest writes:

    LBA 0          an exclusive disk's record (the last writer's)
    LBA 1          a collision marker, if a writer read back another's record
    LBA 8 + slot   a shareable disk's record of the writer with that slot

Everything here is pure (bytes in, records out) so it is tested on captured sectors.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ..settings import REPO
from ..wait import LabError

SECTOR_BYTES = 512
WRITER_BIN = os.path.join(REPO, "build", "writer.bin")
CONFIG_MAGIC = b"VDLMCFG1"
RECORD_MAGIC = b"VDLMREC1"
COLLISION_MAGIC = b"VDLMCOLL"
ID_BYTES = 16
RECORD_BYTES = 36
RECORD_LBA = 0
COLLISION_LBA = 1
SHARED_BASE_LBA = 8
MAX_SLOT = 255
FIRST_DATA_DRIVE = 0x81
MODES = {"rw": "x", "shareable": "s", "ro": "r"}
MAX_DISKS = (SECTOR_BYTES - 26) // 2


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


def config_sector(writer: str, modes: Sequence[str], slot: int = 0) -> bytes:
    """The configuration sector: writer id, shareable slot, one mode per data disk."""
    raw_id = writer.encode()
    if not raw_id or len(raw_id) > ID_BYTES:
        raise WriterError(f"writer id {writer!r} must be 1..{ID_BYTES} bytes")
    if not 0 <= slot <= MAX_SLOT:
        raise WriterError(f"writer slot {slot} is not in 0..{MAX_SLOT}")
    if len(modes) > MAX_DISKS:
        raise WriterError(f"{len(modes)} data disks: the writer handles at most {MAX_DISKS}")
    entries = b""
    for index, mode in enumerate(modes):
        if mode not in MODES:
            raise WriterError(f"disk mode {mode!r} is not one of {', '.join(MODES)}")
        entries += bytes([FIRST_DATA_DRIVE + index, ord(MODES[mode])])
    body = CONFIG_MAGIC + raw_id.ljust(ID_BYTES, b"\0") + bytes([slot, len(modes)]) + entries
    return body.ljust(SECTOR_BYTES, b"\0")


def boot_image(writer: str, modes: Sequence[str], slot: int = 0, program: bytes = b"") -> bytes:
    """The boot disk's bytes: the writer program, then its configuration sector."""
    if not program:
        try:
            with open(WRITER_BIN, "rb") as f:
                program = f.read()
        except OSError as err:
            raise WriterError(f"{WRITER_BIN}: {err.strerror}: run `make guest` first") from err
    if len(program) != SECTOR_BYTES or program[-2:] != b"\x55\xaa":
        raise WriterError("the writer program is not a 512-byte boot sector")
    return program + config_sector(writer, modes, slot)


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
