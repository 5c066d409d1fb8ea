"""The boot protocol's zero page and the ramdisk a loader hands over (Documentation/x86/boot.txt,
arch/x86/include/uapi/asm/bootparam.h; offsets per spec §3.4, marked UNCONFIRMED there)."""

from __future__ import annotations

import struct

from earlymm.arch.cpuid import CpuIdentity, Vendor
from earlymm.hw.memory import PhysMem, Region, RegionType

EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
EFI_LOADER_SIGNATURE = 0x1C0  # efi_info.efi_loader_signature
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
SETUP_DATA = 0x250  # hdr.setup_data: physical address of the first struct setup_data (boot protocol 2.09)
SETUP_E820_EXT = 1
BDA_BASE_MEM_KIB = 0x413  # BIOS data area: conventional memory size in KiB
BDA_EBDA_SEGMENT = 0x40E  # BIOS data area: EBDA segment
MICROCODE_PATHS = {Vendor.INTEL: b"kernel/x86/microcode/GenuineIntel.bin",
                   Vendor.AMD: b"kernel/x86/microcode/AuthenticAMD.bin"}
MICROCODE_SIZE = 2048
AMD_UCODE_MAGIC = 0x0041_4D44  # "DMA\0" (arch/x86/kernel/cpu/microcode/amd.c UCODE_MAGIC)
AMD_PATCH_SIZE = 3200  # F17H_MPB_MAX_SIZE


def _e820_entries(e820: tuple[Region, ...], types: dict[RegionType, int]) -> list[Region]:
    return [r for r in sorted(e820, key=lambda r: r.start) if r.kind in types]


def e820_ext_size(e820: tuple[Region, ...], types: dict[RegionType, int]) -> int:
    """Bytes of the SETUP_E820_EXT node for the entries beyond the zero page's 128 (0 if none)."""
    extra = len(_e820_entries(e820, types)) - E820_MAX
    return 16 + 20 * extra if extra > 0 else 0


def write_boot_params(mem: PhysMem, at: int, e820: tuple[Region, ...], types: dict[RegionType, int], *,
                      cmdline_at: int, ramdisk_at: int, ramdisk_size: int, setup_data_at: int = 0,
                      efi_loader: str = "") -> None:
    """The zero page. An e820 map longer than its 128 slots continues in one ``SETUP_E820_EXT`` node at
    ``setup_data_at``, linked from ``hdr.setup_data``, as boot loaders (and kexec) do."""
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
    page[EFI_LOADER_SIGNATURE:EFI_LOADER_SIGNATURE + 4] = efi_loader.encode().ljust(4, b"\0")
    entries = _e820_entries(e820, types)
    page[E820_ENTRIES] = min(len(entries), E820_MAX)
    for i, r in enumerate(entries[:E820_MAX]):
        struct.pack_into("<QQI", page, E820_TABLE + 20 * i, r.start, r.end - r.start, types[r.kind])
    rest = entries[E820_MAX:]
    if rest:
        node = bytearray(struct.pack("<QII", 0, SETUP_E820_EXT, 20 * len(rest)))
        for r in rest:
            node += struct.pack("<QQI", r.start, r.end - r.start, types[r.kind])
        mem.write(setup_data_at, bytes(node))
        struct.pack_into("<Q", page, SETUP_DATA, setup_data_at)
    mem.write(at, bytes(page))


def cpio_header(name: bytes, size: int, ino: int) -> bytes:
    namesize = len(name) + 1
    hdr = b"070701" + b"".join(b"%08X" % v for v in (ino, 0o100644, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0))
    out = hdr + name + b"\0"
    return out + b"\0" * (-len(out) % 4)


def intel_microcode(identity: CpuIdentity) -> bytes:
    """One Intel update for this CPU: the 48-byte header (header version 1, revision, date, processor
    signature, …, data size, total size) and its data (SDM Vol. 3A §9.11.1)."""
    ucode = bytearray(MICROCODE_SIZE)
    struct.pack_into("<IIIIIIIIII", ucode, 0, 1, 0x10, 0x2013_0101, identity.signature, 0, 0, 1,
                     MICROCODE_SIZE - 48, MICROCODE_SIZE, 0)
    return bytes(ucode)


def amd_microcode(identity: CpuIdentity) -> bytes:
    """An AMD container: magic, the equivalence table (this CPU's signature → equivalence id, then the
    zero terminator) and one patch section whose header names that id (amd.c's container format)."""
    equiv_id = 0x8000 | max(identity.family - 0xF, 0) << 8 | identity.model
    table = struct.pack("<IIIHH", identity.signature, 0, 0, equiv_id, 0) + bytes(16)
    patch = bytearray(AMD_PATCH_SIZE)
    struct.pack_into("<IIHBBIIIHBBB", patch, 0, 0x2019_0101, 0x0800_1000, 0x8000, 0, 0, 0, 0, 0, equiv_id, 0, 0,
                     0)
    return (struct.pack("<III", AMD_UCODE_MAGIC, 0, len(table)) + table
            + struct.pack("<II", 1, len(patch)) + bytes(patch))


def write_ramdisk(mem: PhysMem, at: int, size: int, identity: CpuIdentity) -> None:
    """An uncompressed newc cpio: the early microcode file for the CPU's vendor (as the host's
    microcode package puts it in the initramfs), then one file filling the rest, then the trailer.
    Only the headers and the microcode are written, so a huge ramdisk costs nothing."""
    pos = at
    blob = intel_microcode(identity) if identity.vendor is Vendor.INTEL else amd_microcode(identity)
    mc = cpio_header(MICROCODE_PATHS[identity.vendor], len(blob), 1)
    mem.write(pos, mc + blob)
    pos += len(mc) + len(blob)
    trailer = cpio_header(b"TRAILER!!!", 0, 3)
    filler_hdr_len = len(cpio_header(b"initrd.img", 0, 2))
    filler = (size - (pos - at) - filler_hdr_len - len(trailer)) & ~3
    if filler < 0:
        raise ValueError(f"ramdisk of {size} bytes is too small for its microcode file")
    mem.write(pos, cpio_header(b"initrd.img", filler, 2))
    pos += filler_hdr_len + filler
    mem.write(pos, trailer)
