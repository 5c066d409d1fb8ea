"""The kernel's reading of what the boot loader handed over: ``copy_bootdata`` (arch/x86/kernel/head64.c
@ v3.9) and the ``boot_params`` fields later code consults (ramdisk, e820), at the offsets of the boot
protocol (arch/x86/include/uapi/asm/bootparam.h; spec §3.4)."""

from __future__ import annotations

import struct

from earlymm.arch.addr import PhysAddr
from earlymm.kernel.consts import COMMAND_LINE_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.platform import bootparams as bp

BOOT_PARAMS_SIZE = 4096


def copy_bootdata(ctx: KernelContext, real_mode_data: int) -> None:
    """Copy ``boot_params`` and the command line the loader left, reading both through ``__va``."""
    lay = ctx.layout
    ctx.memcpy(lay["boot_params"], real_mode_data, BOOT_PARAMS_SIZE)
    sanitize_boot_params(ctx)
    ptr = ctx.rd(lay["boot_params"] + bp.CMD_LINE_PTR, 4) | ctx.rd(lay["boot_params"] + bp.EXT_CMD_LINE_PTR, 4) << 32
    if ptr:
        ctx.memcpy(lay["boot_command_line"], ctx.va(ptr), COMMAND_LINE_SIZE)


def sanitize_boot_params(ctx: KernelContext) -> None:
    """A loader that left ``sentinel`` set did not clear the zero page: wipe the fields it may not have
    meant (bootparam_utils.h). The model's loader clears it, so this only reads the byte."""
    if ctx.rd(ctx.layout["boot_params"] + bp.SENTINEL, 1):
        ctx.memset(ctx.layout["boot_params"] + bp.EXT_RAMDISK_IMAGE, 0, 12)


def ramdisk_range(ctx: KernelContext) -> tuple[int, int]:
    """(image, size) from ``boot_params``: ``hdr.ramdisk_image | ext_ramdisk_image << 32`` (spec §3.8)."""
    b = ctx.layout["boot_params"]
    image = ctx.rd(b + bp.RAMDISK_IMAGE, 4) | ctx.rd(b + bp.EXT_RAMDISK_IMAGE, 4) << 32
    size = ctx.rd(b + bp.RAMDISK_SIZE, 4) | ctx.rd(b + bp.EXT_RAMDISK_SIZE, 4) << 32
    return image, size


def read_e820(ctx: KernelContext) -> list[tuple[int, int, int]]:
    """The e820 table from the kernel's copy of ``boot_params`` (``setup_memory_map``)."""
    b = ctx.layout["boot_params"]
    n = min(ctx.rd(b + bp.E820_ENTRIES, 1), bp.E820_MAX)
    out = []
    for i in range(n):
        raw = ctx.cpu.read(b + bp.E820_TABLE + 20 * i, 20)
        addr, size = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
        out.append((addr, size, int.from_bytes(raw[16:20], "little")))
    return out


def setup_data_nodes(ctx: KernelContext) -> list[tuple[int, int, int]]:
    """``parse_setup_data``'s walk of the ``hdr.setup_data`` list: (physical address, type, data length)
    of each node, each header read through ``early_memremap`` (boot protocol 2.09 and later)."""
    from earlymm.kernel.early_ioremap import read_phys

    b = ctx.layout["boot_params"]
    if ctx.rd(b + bp.VERSION, 2) < 0x0209:
        return []
    pa, out, seen = ctx.rd(b + bp.SETUP_DATA), [], set()
    while pa and pa not in seen:
        seen.add(pa)
        hdr = read_phys(ctx, PhysAddr(pa), 16)
        if hdr is None:
            break
        nxt, kind, length = struct.unpack("<QII", hdr)
        out.append((pa, kind, length))
        pa = nxt
    return out
