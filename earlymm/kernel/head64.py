"""``x86_64_start_kernel`` and what it calls before ``start_kernel`` (arch/x86/kernel/head64.c @ v3.9;
the ``current`` profile follows the 6.x order). Spec §3.4, §3.9.

``copy_bootdata`` and the early microcode loader read boot data through ``__va``: the first direct-map
accesses, and so the first early page faults.
"""

from __future__ import annotations

from earlymm.kernel.boot_data import copy_bootdata
from earlymm.kernel.context import KernelContext
from earlymm.kernel.early_fault import install_early_idt, reset_early_page_tables
from earlymm.kernel.events import Note
from earlymm.kernel.microcode import load_ucode_bsp
from earlymm.kernel.native import native_tlb_flush_global_cr4


def x86_64_start_kernel(ctx: KernelContext, real_mode_data: int) -> None:
    """Model of ``x86_64_start_kernel(real_mode_data)``; ``real_mode_data`` is the physical address of
    the boot loader's ``boot_params`` (``%rsi`` at entry, passed in ``%rdi``)."""
    lay, cpu = ctx.layout, ctx.cpu
    reset_early_page_tables(ctx)  # "Kill off the identity-map trampoline"
    clear_bss(ctx)
    if ctx.profile.clear_top_pgt_first:
        ctx.memset(lay.init_pgt, 0, 4096)  # clear_page(init_top_pgt) comes first in 6.x
    if ctx.profile.global_flush_in_start_kernel:
        native_tlb_flush_global_cr4(cpu)  # drop the decompressor's global identity entries
    install_early_idt(ctx)
    ctx.emit(Note(f"early IDT loaded: vectors 0-31 → {ctx.profile.idt_handlers}"))
    copy_bootdata(ctx, ctx.va(real_mode_data))
    load_ucode_bsp(ctx)
    if not ctx.profile.clear_top_pgt_first:
        ctx.memset(lay.init_pgt, 0, 4096)  # clear_page(init_level4_pgt)
    last = ctx.pgt.entry_size * (ctx.pgt.ptrs_per_pgd - 1)
    ctx.wr(lay.init_pgt + last, ctx.rd(lay.top_pgt + last))  # a plain C assignment, not set_pgd()
    ctx.emit(Note(f"{ctx.profile.init_pgt}[511] = {ctx.profile.top_pgt}[511]: the final table inherits "
                  "the kernel-image mapping"))


def clear_bss(ctx: KernelContext) -> None:
    """``clear_bss``: zero .bss (6.1: and the BRK area)."""
    lay = ctx.layout
    ctx.memset(lay["__bss_start"], 0, lay["__bss_stop"] - lay["__bss_start"])
    if ctx.profile.clear_brk:
        ctx.memset(lay["__brk_base"], 0, lay["__brk_limit"] - lay["__brk_base"])
