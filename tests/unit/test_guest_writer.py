"""The writer guest's host side: its boot disk and the records it leaves, on built sectors."""

from __future__ import annotations

import struct

import pytest

from lab.guest.writer import (
    COLLISION_MAGIC,
    RECORD_MAGIC,
    SECTOR_BYTES,
    WriterError,
    boot_image,
    config_sector,
    parse_collision,
    parse_record,
)

PROGRAM = bytes(510) + b"\x55\xaa"


def record(writer: str, nonce: int, counter: int, good: bool = True) -> bytes:
    head = RECORD_MAGIC + writer.encode().ljust(16, b"\0") + struct.pack("<II", nonce, counter)
    check = 0
    for (word,) in struct.iter_unpack("<I", head):
        check ^= word
    return (head + struct.pack("<I", check if good else check ^ 1)).ljust(SECTOR_BYTES, b"\0")


def test_config_sector_lists_drives_in_bios_order() -> None:
    sector = config_sector("vm-1", ["rw", "shareable", "ro"], slot=3)
    assert len(sector) == SECTOR_BYTES
    assert sector[:8] == b"VDLMCFG1"
    assert sector[8:24] == b"vm-1".ljust(16, b"\0")
    assert sector[24:26] == bytes([3, 3])
    assert sector[26:32] == bytes([0x81, ord("x"), 0x82, ord("s"), 0x83, ord("r")])


@pytest.mark.parametrize(
    ("writer", "modes", "slot", "message"),
    [
        ("", ["rw"], 0, "1..16 bytes"),
        ("a-name-of-17-byte", ["rw"], 0, "1..16 bytes"),
        ("vm-1", ["rw"], 256, "slot 256"),
        ("vm-1", ["exclusive"], 0, "disk mode 'exclusive'"),
        ("vm-1", ["rw"] * 300, 0, "at most"),
    ],
    ids=["empty-id", "long-id", "slot", "mode", "too-many-disks"],
)
def test_bad_configuration_is_refused(
    writer: str, modes: list[str], slot: int, message: str
) -> None:
    with pytest.raises(WriterError, match=message):
        config_sector(writer, modes, slot)


def test_boot_image_is_program_then_config() -> None:
    image = boot_image("vm-2", ["rw"], program=PROGRAM)
    assert image[:SECTOR_BYTES] == PROGRAM
    assert image[SECTOR_BYTES:][:8] == b"VDLMCFG1"
    with pytest.raises(WriterError, match="boot sector"):
        boot_image("vm-2", ["rw"], program=bytes(512))


def test_records_parse_and_checksums_catch_torn_sectors() -> None:
    rec = parse_record(record("vm-1", 7, 42))
    assert rec is not None and (rec.writer, rec.nonce, rec.counter, rec.checksum_ok) == (
        "vm-1",
        7,
        42,
        True,
    )
    torn = parse_record(record("vm-1", 7, 42, good=False))
    assert torn is not None and not torn.checksum_ok
    assert parse_record(bytes(SECTOR_BYTES)) is None


def test_collision_marker_names_both_writers() -> None:
    own = record("vm-2", 9, 3)
    marker = COLLISION_MAGIC + own[8:64] + record("vm-1", 5, 201)[:36]
    seen = parse_collision(marker.ljust(SECTOR_BYTES, b"\0"))
    assert seen is not None and (seen.writer, seen.nonce, seen.counter) == ("vm-2", 9, 3)
    assert seen.seen is not None and seen.seen.writer == "vm-1" and seen.seen.counter == 201
    assert parse_collision(own) is None
