"""Where the 5-level switch's 32-bit trampoline goes, and whether the user vetoed 5-level paging (Debian
6.1 arch/x86/boot/compressed/pgtable_64.c ``find_trampoline_placement``, ``cmdline_find_option_bool``;
spec §4.3). The decompressor reads firmware and boot data at their physical addresses, identity-mapped."""

from __future__ import annotations

import struct

from earlymm.kernel.context import KernelContext
from earlymm.platform import bootparams as bp

KERNEL32_CS = 0x08  # the decompressor's GDT: __KERNEL32_CS (CS.L = 0, CS.D = 1)
BIOS_START_MIN, BIOS_START_MAX = 0x20000, 0x9F000
TRAMPOLINE_32BIT_SIZE = 0x2000
E820_RAM = 1
U64 = (1 << 64) - 1


def find_trampoline_placement(ctx: KernelContext) -> int:
    """The top of usable low memory from the BIOS data area (not on an EFI boot), lowered to the EBDA and to
    the end of the highest e820 RAM entry below it that holds 8 KiB; the trampoline goes just under it."""
    cpu, b = ctx.cpu, ctx.platform.entry.boot_data
    bios_start = ebda_start = 0
    if cpu.read(b + bp.EFI_LOADER_SIGNATURE, 4) not in (b"EL32", b"EL64"):
        ebda_start = cpu.load(bp.BDA_EBDA_SEGMENT, 2) << 4
        bios_start = cpu.load(bp.BDA_BASE_MEM_KIB, 2) << 10
    if bios_start < BIOS_START_MIN or bios_start > BIOS_START_MAX:
        bios_start = BIOS_START_MAX
    if BIOS_START_MIN < ebda_start < bios_start:
        bios_start = ebda_start
    bios_start &= ~0xFFF
    n = cpu.load(b + bp.E820_ENTRIES, 1)
    table = cpu.read(b + bp.E820_TABLE, 20 * n)
    for i in range(n - 1, -1, -1):
        addr, size, kind = struct.unpack_from("<QQI", table, 20 * i)
        new = bios_start
        if bios_start <= addr or kind != E820_RAM:
            continue
        if bios_start > addr + size:
            new = addr + size
        new &= ~0xFFF
        below = (new - TRAMPOLINE_32BIT_SIZE) & U64  # unsigned long: wraps for an entry ending under 8 KiB
        if below < addr:
            continue
        if below > bios_start:  # "protect against underflow"
            break
        bios_start = new
        break
    return bios_start - TRAMPOLINE_32BIT_SIZE


def no5lvl(ctx: KernelContext) -> bool:
    """``cmdline_find_option_bool("no5lvl")`` on the loader's command line (``cmd_line_ptr``)."""
    cpu, b = ctx.cpu, ctx.platform.entry.boot_data
    ptr = cpu.load(b + bp.CMD_LINE_PTR, 4) | cpu.load(b + bp.EXT_CMD_LINE_PTR, 4) << 32
    if not ptr:
        return False
    text = cpu.read(ptr, 2048).split(b"\0", 1)[0].decode("latin-1")
    return "no5lvl" in text.split()
