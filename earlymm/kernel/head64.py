"""``x86_64_start_kernel`` and what it calls before ``start_kernel`` (arch/x86/kernel/head64.c @ v3.9;
the ``current`` profile follows the 6.x order). Spec §3.4, §3.9.

``copy_bootdata`` and the early microcode loader read boot data through ``__va``: the first direct-map
accesses, and so the first early page faults.
"""

from __future__ import annotations

import struct

from earlymm.arch.flags import Cr4
from earlymm.kernel.consts import COMMAND_LINE_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.early_fault import install_early_idt, reset_early_page_tables
from earlymm.kernel.events import Note
from earlymm.platform import bootparams as bp

BOOT_PARAMS_SIZE = 4096


def x86_64_start_kernel(ctx: KernelContext, real_mode_data: int) -> None:
    """Model of ``x86_64_start_kernel(real_mode_data)``; ``real_mode_data`` is the physical address of
    the boot loader's ``boot_params`` (``%rsi`` at entry, passed in ``%rdi``)."""
    lay, cpu = ctx.layout, ctx.cpu
    reset_early_page_tables(ctx)  # "Kill off the identity-map trampoline"
    clear_bss(ctx)
    if ctx.profile.clear_top_pgt_first:
        ctx.memset(lay.init_pgt, 0, 4096)  # clear_page(init_top_pgt) comes first in 6.x
    if ctx.profile.global_flush_in_start_kernel and cpu.regs.cr4 & Cr4.PGE:
        cpu.write_cr4(cpu.regs.cr4 & ~int(Cr4.PGE))  # __native_tlb_flush_global(): drop the
        cpu.write_cr4(cpu.regs.cr4 | int(Cr4.PGE))  # decompressor's global identity entries
    install_early_idt(ctx)
    ctx.emit(Note("early IDT loaded: vectors 0-31 → early_idt_handlers"))
    copy_bootdata(ctx, ctx.va(real_mode_data))
    load_ucode_bsp(ctx)
    if not ctx.profile.clear_top_pgt_first:
        ctx.memset(lay.init_pgt, 0, 4096)  # clear_page(init_level4_pgt)
    ctx.wr(lay.init_pgt + 511 * 8, ctx.rd(lay.top_pgt + 511 * 8))
    ctx.emit(Note(f"{ctx.profile.init_pgt}[511] = {ctx.profile.top_pgt}[511]: the final table inherits "
                  "the kernel-image mapping"))


def clear_bss(ctx: KernelContext) -> None:
    lay = ctx.layout
    ctx.memset(lay["__bss_start"], 0, lay["__bss_stop"] - lay["__bss_start"])


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


def load_ucode_bsp(ctx: KernelContext) -> None:
    """Early Intel microcode (arch/x86/kernel/microcode_intel_early.c @ v3.9): find the microcode file
    in the initrd's leading uncompressed cpio, reading it through the direct map, then scan its
    microcode headers. Difference: the model uses the 64-bit ramdisk address (``ext_ramdisk_image``
    included), as later kernels do, so a ramdisk above 4 GiB is read where it is."""
    image, size = ramdisk_range(ctx)
    if not image or not size:
        return
    start = ctx.va(image)
    found = find_cpio_data(ctx, bp.MICROCODE_PATH, start, size)
    if found is None:
        ctx.emit(Note("early microcode: no microcode file in the initrd"))
        return
    data, length = found
    off, blobs = 0, 0
    while off + 48 <= length:
        hdr = ctx.cpu.read(data + off, 48)
        total = struct.unpack_from("<I", hdr, 32)[0] or 2048
        if total < 48 or off + total > length:
            break
        blobs += 1
        off += total
    ctx.emit(Note(f"early microcode: {blobs} update(s) found in the initrd at {image:#x}"))


def find_cpio_data(ctx: KernelContext, path: bytes, start: int, size: int) -> tuple[int, int] | None:
    """``find_cpio_data()`` (lib/earlycpio.c): walk newc headers until ``path`` or the end."""
    pos, end = start, start + size
    while pos + 110 <= end:
        hdr = ctx.cpu.read(pos, 110)
        if hdr[:6] not in (b"070701", b"070702"):
            return None
        fields = [int(hdr[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        name_at = pos + 110
        name = ctx.cpu.read(name_at, max(namesize - 1, 0))
        data = (name_at + namesize + 3) & ~3
        if name == path:
            return data, filesize
        if name == b"TRAILER!!!":
            return None
        pos = (data + filesize + 3) & ~3
    return None
