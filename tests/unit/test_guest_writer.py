"""The writer guest's host side: its boot disk and the records it leaves, on built sectors."""

from __future__ import annotations

import struct

import pytest

from lab.guest.writer import (
    BOOT_IMAGE_BYTES,
    COLLISION_MAGIC,
    RECORD_MAGIC,
    SECTOR_BYTES,
    WriterError,
    boot_image,
    fwcfg_config,
    parse_collision,
    parse_record,
    sysinfo_xml,
)

PROGRAM = bytes(510) + b"\x55\xaa"


def record(writer: str, nonce: int, counter: int, good: bool = True) -> bytes:
    head = RECORD_MAGIC + writer.encode().ljust(16, b"\0") + struct.pack("<II", nonce, counter)
    check = 0
    for (word,) in struct.iter_unpack("<I", head):
        check ^= word
    return (head + struct.pack("<I", check if good else check ^ 1)).ljust(SECTOR_BYTES, b"\0")


def test_configuration_string_and_sysinfo() -> None:
    assert fwcfg_config("vm-1", ["rw", "shareable", "ro"], slot=3) == "xsr:3:vm-1"
    assert sysinfo_xml("vm-1", ["rw"]) == (
        "<sysinfo type='fwcfg'><entry name='opt/org.virtdlm/writer'>x:0:vm-1</entry></sysinfo>"
    )


@pytest.mark.parametrize(
    ("writer", "modes", "slot", "message"),
    [
        ("", ["rw"], 0, "1..16"),
        ("a-name-of-17-byte", ["rw"], 0, "1..16"),
        ("vm:1", ["rw"], 0, "no ':'"),
        ("vm-1", ["rw"], 10, "slot 10"),
        ("vm-1", ["exclusive"], 0, "disk mode 'exclusive'"),
        ("vm-1", ["rw"] * 17, 0, "at most"),
    ],
    ids=["empty-id", "long-id", "colon", "slot", "mode", "too-many-disks"],
)
def test_bad_configuration_is_refused(
    writer: str, modes: list[str], slot: int, message: str
) -> None:
    with pytest.raises(WriterError, match=message):
        fwcfg_config(writer, modes, slot)


def test_boot_image_is_the_program_padded() -> None:
    image = boot_image(program=PROGRAM)
    assert image[:SECTOR_BYTES] == PROGRAM and len(image) == BOOT_IMAGE_BYTES
    with pytest.raises(WriterError, match="boot sector"):
        boot_image(program=bytes(512))


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
