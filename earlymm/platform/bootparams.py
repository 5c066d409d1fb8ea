"""The boot protocol's zero page and the ramdisk a loader hands over (Documentation/x86/boot.txt,
arch/x86/include/uapi/asm/bootparam.h; offsets per spec §3.4, marked UNCONFIRMED there)."""

from __future__ import annotations

import struct

from earlymm.hw.memory import PhysMem, Region, RegionType

EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8
SENTINEL = 0x1EF
BOOT_FLAG = 0x1FE
HEADER = 0x202
VERSION = 0x206
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
XLOADFLAGS = 0x236
E820_TABLE = 0x2D0
E820_MAX = 128
MICROCODE_PATH = b"kernel/x86/microcode/GenuineIntel.bin"
MICROCODE_SIZE = 2048


def write_boot_params(mem: PhysMem, at: int, e820: tuple[Region, ...], types: dict[RegionType, int], *,
                      cmdline_at: int, ramdisk_at: int, ramdisk_size: int) -> None:
    page = bytearray(4096)
    struct.pack_into("<H", page, BOOT_FLAG, 0xAA55)
    page[HEADER:HEADER + 4] = b"HdrS"
    struct.pack_into("<H", page, VERSION, 0x020B)
    page[TYPE_OF_LOADER] = 0xFF
    page[LOADFLAGS] = 0x01  # LOADED_HIGH
    struct.pack_into("<H", page, XLOADFLAGS, 0x1 | 0x2)  # XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G
    struct.pack_into("<I", page, RAMDISK_IMAGE, ramdisk_at & 0xFFFF_FFFF)
    struct.pack_into("<I", page, RAMDISK_SIZE, ramdisk_size & 0xFFFF_FFFF)
    struct.pack_into("<I", page, EXT_RAMDISK_IMAGE, ramdisk_at >> 32)
    struct.pack_into("<I", page, EXT_RAMDISK_SIZE, ramdisk_size >> 32)
    struct.pack_into("<I", page, CMD_LINE_PTR, cmdline_at & 0xFFFF_FFFF)
    struct.pack_into("<I", page, EXT_CMD_LINE_PTR, cmdline_at >> 32)
    entries = [r for r in sorted(e820, key=lambda r: r.start) if r.kind in types][:E820_MAX]
    page[E820_ENTRIES] = len(entries)
    for i, r in enumerate(entries):
        struct.pack_into("<QQI", page, E820_TABLE + 20 * i, r.start, r.end - r.start, types[r.kind])
    mem.write(at, bytes(page))


def cpio_header(name: bytes, size: int, ino: int) -> bytes:
    namesize = len(name) + 1
    hdr = b"070701" + b"".join(b"%08X" % v for v in (ino, 0o100644, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0))
    out = hdr + name + b"\0"
    return out + b"\0" * (-len(out) % 4)


def write_ramdisk(mem: PhysMem, at: int, size: int) -> None:
    """An uncompressed newc cpio: the early microcode file, then one file filling the rest, then the
    trailer. Only the headers and the microcode are written, so a huge ramdisk costs nothing."""
    pos = at
    mc = cpio_header(MICROCODE_PATH, MICROCODE_SIZE, 1)
    ucode = bytearray(MICROCODE_SIZE)
    struct.pack_into("<IIIIIIIIII", ucode, 0, 1, 0x10, 0x2013_0101, 0x306A9, 0, 0, 1, MICROCODE_SIZE - 48,
                     MICROCODE_SIZE, 0)
    mem.write(pos, mc + bytes(ucode))
    pos += len(mc) + MICROCODE_SIZE
    trailer = cpio_header(b"TRAILER!!!", 0, 3)
    filler_hdr_len = len(cpio_header(b"initrd.img", 0, 2))
    filler = (size - (pos - at) - filler_hdr_len - len(trailer)) & ~3
    if filler < 0:
        raise ValueError(f"ramdisk of {size} bytes is too small for its microcode file")
    mem.write(pos, cpio_header(b"initrd.img", filler, 2))
    pos += filler_hdr_len + filler
    mem.write(pos, trailer)
