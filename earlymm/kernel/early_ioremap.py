"""Boot-time ioremap through the fixmap (arch/x86/mm/ioremap.c ``early_ioremap_init``/``early_ioremap_pmd``
@ v3.9; 6.1 with mm/early_ioremap.c): a page of PTEs, ``bm_pte``, linked into ``level2_fixmap_pgt`` so that
setup_arch can map firmware tables and setup data before any direct map exists.

``early_ioremap_pmd`` finds that pmd by walking the *current* table through ``__va``: while CR3 is still
the early table, both ``__va(read_cr3_pa())`` and the pud read fault and are materialised by the early
#PF handler — two early page faults the real 6.1 kernel takes at exactly this point (the mid-boot
fixtures log them). ``early_memremap`` then writes ``bm_pte`` entries with ``set_pte`` and flushes the
page; ``early_memunmap`` clears them again.

Differences: the btmap slots' virtual addresses come from the profile (6.1: the 512 btmap pages fill the
pmd below ``level1_fixmap_pgt``; v3.9's place, in the pmd under FIXADDR_TOP, is UNCONFIRMED, spec §7.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earlymm.arch.addr import PhysAddr, VirtAddr
from earlymm.kernel.consts import __PAGE_KERNEL, START_KERNEL_MAP
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import Note
from earlymm.kernel.init_64 import pmd_populate_kernel
from earlymm.kernel.pgtable import p4d_offset, pgd_offset_pgd, pmd_offset, pud_offset

NR_FIX_BTMAPS = 64  # pages one early mapping may span


@dataclass
class EarlyIoremap:
    """The btmap slots in use (``prev_map``/``prev_size`` of mm/early_ioremap.c)."""

    slots: dict[int, tuple[int, int]] = field(default_factory=dict)  # slot → (va, pages)


def btmap_base(ctx: KernelContext) -> int:
    """``__fix_to_virt(FIX_BTMAP_BEGIN)``: the lowest btmap page, in the pmd the profile names."""
    fixmap_pud = START_KERNEL_MAP + ctx.pgt.pud_size  # level3_kernel_pgt[511] → level2_fixmap_pgt
    return fixmap_pud + ctx.profile.btmap_pmd * ctx.pgt.pmd_size + ctx.profile.btmap_page * 4096


def early_ioremap_pmd(ctx: KernelContext, addr: int) -> int:
    """``early_ioremap_pmd(addr)``: "don't assume we're using swapper_pg_dir" — walk from CR3 via __va."""
    base = ctx.va(ctx.pv.mmu.read_cr3() & ctx.pgt.pte_pfn_mask)  # __va(read_cr3_pa())
    pgd = pgd_offset_pgd(ctx.pgt, base, addr)
    return pmd_offset(ctx, pud_offset(ctx, p4d_offset(ctx, pgd, addr), addr), addr)


def early_ioremap_init(ctx: KernelContext) -> None:
    """Link ``bm_pte`` under the btmap pmd with ``pmd_populate_kernel`` (after clearing it)."""
    ctx.ioremap = EarlyIoremap()
    addr = btmap_base(ctx)
    pmd = early_ioremap_pmd(ctx, addr)
    bm_pte = ctx.sym("bm_pte")
    ctx.memset(bm_pte, 0, 4096)  # memset(bm_pte, 0, sizeof(bm_pte))
    pmd_populate_kernel(ctx, VirtAddr(pmd), bm_pte)
    if pmd != early_ioremap_pmd(ctx, addr + (NR_FIX_BTMAPS * 8 - 1) * 4096):
        ctx.print("WARNING: early_ioremap_init: the btmap range spans more than one pmd")
    ctx.emit(Note(f"early_ioremap_init: bm_pte linked at pmd {pmd:#x} for {addr:#x}"))


def early_memremap(ctx: KernelContext, phys: int, size: int) -> int | None:
    """Map ``size`` bytes at ``phys`` through a free btmap slot; None (NULL) when the request needs more
    than ``NR_FIX_BTMAPS`` pages or no slot is free, after the kernel's WARN."""
    state: EarlyIoremap = ctx.ioremap
    offset = phys & 0xFFF
    pages = (offset + size + 4095) >> 12
    slot = next((i for i in range(ctx.profile.btmap_slots) if i not in state.slots), None)
    if pages > NR_FIX_BTMAPS or slot is None:
        ctx.print(f"WARNING: __early_ioremap({phys:#x}, {size:#x}): "
                  + ("too many pages" if slot is not None else "no free slot"))
        return None
    va = btmap_base(ctx) + slot * NR_FIX_BTMAPS * 4096
    mmu = ctx.pv.mmu
    prot = __PAGE_KERNEL & ctx.rd(ctx.sym("__supported_pte_mask"))
    for k in range(pages):  # __early_set_fixmap(idx--, phys, FIXMAP_PAGE_NORMAL)
        mmu.set_pte(VirtAddr(ctx.sym("bm_pte") + 8 * ctx.pgt.pte_index(va + k * 4096)),
                    mmu.make_entry((((phys >> 12) + k) << 12) | prot))
        mmu.flush_tlb_one_user(VirtAddr(va + k * 4096))
    state.slots[slot] = (va, pages)
    return va + offset


def early_memunmap(ctx: KernelContext, addr: int) -> None:
    """``early_memunmap``: clear the slot's PTEs (``pte_clear``) and flush each page."""
    state: EarlyIoremap = ctx.ioremap
    slot = next(i for i, (va, n) in state.slots.items() if va <= addr < va + n * 4096)
    va, pages = state.slots.pop(slot)
    mmu = ctx.pv.mmu
    for k in range(pages):
        mmu.set_pte(VirtAddr(ctx.sym("bm_pte") + 8 * ctx.pgt.pte_index(va + k * 4096)), mmu.make_entry(0))
        mmu.flush_tlb_one_user(VirtAddr(va + k * 4096))


def read_phys(ctx: KernelContext, phys: PhysAddr, size: int) -> bytes | None:
    """Read firmware/setup data the way setup_arch does: early_memremap, copy, early_memunmap."""
    va = early_memremap(ctx, phys, size)
    if va is None:
        return None
    data = ctx.cpu.read(va, size)
    early_memunmap(ctx, va)
    return data
