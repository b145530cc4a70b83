#!/usr/bin/env python3
"""Give the lab's shared block device two primary partitions, once.

    mbr.py DEVICE      write an MBR with two halves (type 0x83) unless one is there

The nodes' box has no partitioning tool (debootstrap minbase); an MBR is 64 bytes of table
and a signature. Partition 1 plays the exclusive disk and partition 2 the shareable one in
the block-device rows of the black-box suite. An existing table is never touched.
"""

from __future__ import annotations

import os
import struct
import sys

SECTOR = 512
FIRST_LBA = 2048  # 1 MiB alignment, as every partitioning tool does
SIGNATURE = b"\x55\xaa"
LINUX = 0x83


def entry(first_lba: int, sectors: int) -> bytes:
    # status, CHS first (unused: 0xFEFFFF means "use LBA"), type, CHS last, LBA, count
    return struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", LINUX, b"\xfe\xff\xff", first_lba, sectors)


def two_halves(total_sectors: int) -> bytes:
    """The 512-byte MBR sector: two equal, 1 MiB-aligned partitions filling the device."""
    usable = total_sectors - FIRST_LBA
    half = (usable // 2) // FIRST_LBA * FIRST_LBA
    if half <= 0:
        raise ValueError(f"{total_sectors} sectors is too small for two partitions")
    table = entry(FIRST_LBA, half) + entry(FIRST_LBA + half, half) + bytes(32)
    return bytes(446) + table + SIGNATURE


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: mbr.py DEVICE", file=sys.stderr)
        return 2
    device = argv[1]
    fd = os.open(device, os.O_RDWR)
    try:
        first = os.pread(fd, SECTOR, 0)
        if first[510:512] == SIGNATURE and first[446:510] != bytes(64):
            print(f"{device}: has a partition table, left as it is")
            return 0
        total = os.lseek(fd, 0, os.SEEK_END) // SECTOR
        os.pwrite(fd, two_halves(total), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(f"{device}: wrote two partitions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
