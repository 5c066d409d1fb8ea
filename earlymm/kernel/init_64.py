"""The 64-bit direct-map builders and ``cleanup_highmap`` (arch/x86/mm/init_64.c @ v3.9), one function
per level as in Linux. Tables are reached at ``__va`` addresses, so while CR3 is still the early table
each access may fault and be materialised by the early #PF handler (spec §3.8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from earlymm.hw.memory import RegionType
from earlymm.kernel.consts import (
    __PAGE_KERNEL,
    __PAGE_KERNEL_LARGE,
    _KERNPG_TABLE,
    _PAGE_PSE,
    PAGE_SIZE,
    PGDIR_SIZE,
    PMD_SIZE,
    PUD_SIZE,
    START_KERNEL_MAP,
)
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import Note

if TYPE_CHECKING:
    from earlymm.kernel.init import MmState

PG_LEVEL_2M, PG_LEVEL_1G = 1 << 2, 1 << 3  # (1 << PG_LEVEL_2M), (1 << PG_LEVEL_1G)
LARGE_FLAG_BITS = 0x8000_0000_0000_0FFF & ~_PAGE_PSE


def e820_any_mapped(ctx: KernelContext, start: int, end: int) -> bool:
    """``e820_any_mapped(start, end, E820_RAM)`` (E820_RESERVED_KERN is not modelled)."""
    return any(r.kind is RegionType.RAM and r.start < end and start < r.end for r in ctx.machine.config.e820)


def _pfn_pte(ctx: KernelContext, st: MmState, pa: int, prot: int) -> int:
    return (pa | prot) & st.supported_pte_mask


def phys_pte_init(ctx: KernelContext, st: MmState, pte_page: int, addr: int, end: int, prot: int) -> int:
    last = end
    for i in range((addr >> 12) & 511, 512):
        pte = pte_page + 8 * i
        nxt = (addr & ~(PAGE_SIZE - 1)) + PAGE_SIZE
        if addr >= end:
            if not e820_any_mapped(ctx, addr & ~(PAGE_SIZE - 1), nxt):
                ctx.wr(pte, 0)
            addr = nxt
            continue
        if ctx.rd(pte):  # "Xen may have set it up" — reuse a present PTE
            addr = nxt
            continue
        ctx.wr(pte, _pfn_pte(ctx, st, addr & ~(PAGE_SIZE - 1), prot))
        st.pages_4k += 1
        last = nxt
        addr = nxt
    return last


def phys_pmd_init(ctx: KernelContext, st: MmState, pmd_page: int, addr: int, end: int, mask: int, prot: int) -> int:
    last = end
    for i in range((addr >> 21) & 511, 512):
        pmd = pmd_page + 8 * i
        nxt = (addr & ~(PMD_SIZE - 1)) + PMD_SIZE
        new_prot = prot
        if addr >= end:
            if not e820_any_mapped(ctx, addr & ~(PMD_SIZE - 1), nxt):
                ctx.wr(pmd, 0)
            addr = nxt
            continue
        val = ctx.rd(pmd)
        if val:
            if not val & _PAGE_PSE:
                last = phys_pte_init(ctx, st, ctx.va(val & ctx.profile.pte_pfn_mask), addr, end, prot)
                addr = nxt
                continue
            if mask & PG_LEVEL_2M:
                last = nxt
                addr = nxt
                continue
            new_prot = val & LARGE_FLAG_BITS  # split, keeping the large page's protection
        if mask & PG_LEVEL_2M:
            ctx.wr(pmd, _pfn_pte(ctx, st, addr & ~(PMD_SIZE - 1), prot | _PAGE_PSE))
            st.pages_2m += 1
            last = nxt
            addr = nxt
            continue
        pte_page = st.alloc_low_page(ctx, "pte")
        last = phys_pte_init(ctx, st, pte_page, addr, end, new_prot)
        ctx.wr(pmd, ctx.pa(pte_page) | _KERNPG_TABLE)
        addr = nxt
    return last


def phys_pud_init(ctx: KernelContext, st: MmState, pud_page: int, addr: int, end: int, mask: int) -> int:
    last = end
    for i in range((addr >> 30) & 511, 512):
        pud = pud_page + 8 * i
        nxt = (addr & ~(PUD_SIZE - 1)) + PUD_SIZE
        prot = __PAGE_KERNEL
        if addr >= end:
            if not e820_any_mapped(ctx, addr & ~(PUD_SIZE - 1), nxt):
                ctx.wr(pud, 0)
            addr = nxt
            continue
        val = ctx.rd(pud)
        if val:
            if not val & _PAGE_PSE:
                last = phys_pmd_init(ctx, st, ctx.va(val & ctx.profile.pte_pfn_mask), addr, end, mask, prot)
                addr = nxt
                continue
            if mask & PG_LEVEL_1G:
                last = nxt
                addr = nxt
                continue
            prot = val & LARGE_FLAG_BITS
        if mask & PG_LEVEL_1G:
            ctx.wr(pud, _pfn_pte(ctx, st, addr & ~(PUD_SIZE - 1), __PAGE_KERNEL_LARGE))
            st.pages_1g += 1
            last = nxt
            addr = nxt
            continue
        pmd_page = st.alloc_low_page(ctx, "pmd")
        last = phys_pmd_init(ctx, st, pmd_page, addr, end, mask, prot)
        ctx.wr(pud, ctx.pa(pmd_page) | _KERNPG_TABLE)
        addr = nxt
    return last


def kernel_physical_mapping_init(ctx: KernelContext, st: MmState, start: int, end: int, mask: int) -> int:
    """Map [start, end) at ``__va`` into ``init_level4_pgt`` (reached via ``pgd_offset_k``)."""
    vstart, vend = ctx.va(start), ctx.va(end)
    last = end
    while vstart < vend:
        pgd = ctx.layout.init_pgt + 8 * ((vstart >> 39) & 511)
        nxt = min((vstart & ~(PGDIR_SIZE - 1)) + PGDIR_SIZE, vend)
        val = ctx.rd(pgd)
        if val:
            last = phys_pud_init(ctx, st, ctx.va(val & ctx.profile.pte_pfn_mask), ctx.pa(vstart), ctx.pa(vend),
                                 mask)
            vstart = nxt
            continue
        pud_page = st.alloc_low_page(ctx, "pud")
        last = phys_pud_init(ctx, st, pud_page, ctx.pa(vstart), ctx.pa(vend), mask)
        ctx.wr(pgd, ctx.pa(pud_page) | 0x067)  # pgd_populate: _PAGE_TABLE
        vstart = nxt
    ctx.cpu.flush_tlb(include_global=True)  # __flush_tlb_all()
    return last


def cleanup_highmap(ctx: KernelContext, max_pfn_mapped: int, brk_end: int) -> int:
    """Clear ``level2_kernel_pgt`` entries outside [_text, roundup(_brk_end, 2 MiB)) (spec §3.8)."""
    lay = ctx.layout
    vaddr = START_KERNEL_MAP
    vaddr_end = START_KERNEL_MAP + (max_pfn_mapped << 12 if max_pfn_mapped else 512 << 20)
    end = ((brk_end + PMD_SIZE - 1) & ~(PMD_SIZE - 1)) - 1
    cleared = 0
    pmd = lay["level2_kernel_pgt"]
    while vaddr + PMD_SIZE - 1 < vaddr_end:
        if ctx.rd(pmd) and (vaddr < lay.text or vaddr > end):
            ctx.wr(pmd, 0)
            cleared += 1
        pmd += 8
        vaddr += PMD_SIZE
    ctx.emit(Note(f"cleanup_highmap: {cleared} level2_kernel_pgt entries outside the image cleared"))
    return cleared
