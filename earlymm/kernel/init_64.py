"""The 64-bit direct-map builders and ``cleanup_highmap`` (arch/x86/mm/init_64.c @ v3.9; 6.1's
``__kernel_physical_mapping_init``), one function per level as in Linux. Tables are reached at ``__va``
addresses, so while CR3 is still the early table each access may fault and be materialised by the early
#PF handler (spec §3.8). Entries are written with the pv wrappers Linux uses there (``set_pte``,
``set_pmd``, ``pmd_populate_kernel`` …) and read through ``pXd_val``.
"""

from __future__ import annotations

import numpy as np

from earlymm.arch.addr import Pfn, VirtAddr
from earlymm.kernel.consts import (
    __PAGE_KERNEL,
    __PAGE_KERNEL_LARGE,
    _PAGE_PSE,
    _PAGE_TABLE,
    START_KERNEL_MAP,
)
from earlymm.kernel.context import KernelContext
from earlymm.kernel.cpufeature import X86Feature, boot_cpu_has
from earlymm.kernel.events import Note
from earlymm.kernel.mm_state import MmState
from earlymm.kernel.paravirt.ops import SetOp
from earlymm.kernel.pgtable import p4d_offset, pgd_offset_pgd
from earlymm.kernel.table_run import TableRun

PG_LEVEL_2M, PG_LEVEL_1G = 1 << 2, 1 << 3  # (1 << PG_LEVEL_2M), (1 << PG_LEVEL_1G)
LARGE_FLAG_BITS = 0x8000_0000_0000_0FFF & ~_PAGE_PSE
# pmd_populate_kernel/pud_populate/p4d_populate link a new table with _PAGE_TABLE (US set: the leaves
# decide who may use a page), v3.9 and 6.1 alike (arch/x86/include/asm/pgalloc.h).
DIRECT_MAP_TABLE_FLAGS = _PAGE_TABLE


def pfn_pte(ctx: KernelContext, st: MmState, pa: int, prot: int) -> int:
    """``pfn_pte(pa >> PAGE_SHIFT, prot)``: ``massage_pgprot`` drops what ``__supported_pte_mask`` lacks,
    then ``__pte`` converts through ``pv_ops`` (``make_pte``)."""
    return ctx.pv.mmu.make_entry((pa | prot) & st.supported_pte_mask)


def pfn_ptes(ctx: KernelContext, st: MmState, base: int, step: int, n: int, prot: int) -> np.ndarray:
    """``pfn_pte`` for ``n`` consecutive pages of ``step`` bytes from ``base``."""
    pas = np.uint64(base) + np.arange(n, dtype=np.uint64) * np.uint64(step)
    return ctx.pv.mmu.make_entries((pas | np.uint64(prot)) & np.uint64(st.supported_pte_mask))


def flush_tlb_all(ctx: KernelContext) -> None:
    """``__flush_tlb_all`` (tlbflush.h @ v3.9): the global flush where the CPU has PGE, else a CR3 reload."""
    if boot_cpu_has(ctx.cpu, X86Feature.PGE):
        ctx.pv.mmu.flush_tlb_kernel()
    else:
        ctx.pv.mmu.flush_tlb_user()


def _val(ctx: KernelContext, ptr: int) -> int:
    return ctx.entry_val(ctx.rd(ptr, ctx.pgt.entry_size))


def phys_pte_init(ctx: KernelContext, st: MmState, pte_page: int, addr: int, end: int, prot: int) -> int:
    """Model of ``phys_pte_init()`` (init_64.c @ v3.9): 4 KiB leaves with ``set_pte``; present PTEs are
    kept ("Xen may have set it up"); entries past ``end`` that cover no RAM are cleared."""
    g, mmu = ctx.pgt, ctx.pv.mmu
    t = TableRun(ctx, pte_page)
    last = end
    i = g.pte_index(addr)
    while i < g.ptrs_per_pte:
        nxt = (addr & ~0xFFF) + 0x1000
        if addr >= end:
            if not st.e820_any_mapped(addr & ~0xFFF, nxt):
                t.set(SetOp.PTE, i, mmu.make_entry(0))
        elif not t.val(i):
            n = t.zero_run(i, min(g.ptrs_per_pte - i, (end - addr + 0xFFF) >> 12))
            base = addr & ~0xFFF
            t.set_many(SetOp.PTE, i, pfn_ptes(ctx, st, base, 1 << 12, n, prot))
            st.pages_4k += n
            addr = base + (n << 12)
            last = addr
            i += n
            continue
        addr = nxt
        i += 1
    t.sync()
    return last


def phys_pmd_init(ctx: KernelContext, st: MmState, pmd_page: int, addr: int, end: int, mask: int, prot: int) -> int:
    """Model of ``phys_pmd_init()`` (init_64.c @ v3.9): 2 MiB leaves (``set_pte`` on the pmd) where the
    range allows, else a PTE table from ``alloc_low_pages`` linked by ``pmd_populate_kernel``; a present
    table is descended into, a present large page kept or split with its protection."""
    g, mmu = ctx.pgt, ctx.pv.mmu
    t = TableRun(ctx, pmd_page)
    last = end
    i, size = g.pmd_index(addr), g.pmd_size
    while i < g.ptrs_per_pmd:
        nxt = (addr & ~(size - 1)) + size
        new_prot = prot
        if addr >= end:
            if not st.e820_any_mapped(addr & ~(size - 1), nxt):
                t.set(SetOp.PMD, i, mmu.make_entry(0))
            addr, i = nxt, i + 1
            continue
        val = t.val(i)
        if val:
            if not val & _PAGE_PSE:
                t.sync()
                last = phys_pte_init(ctx, st, ctx.va(val & g.pte_pfn_mask), addr, end, prot)
                addr, i = nxt, i + 1
                continue
            if mask & PG_LEVEL_2M:
                last = nxt
                addr, i = nxt, i + 1
                continue
            new_prot = val & LARGE_FLAG_BITS  # split, keeping the large page's protection
        elif mask & PG_LEVEL_2M:
            # set_pte((pte_t *)pmd, pfn_pte(…, prot | _PAGE_PSE)) for each pmd of a run of empty ones
            n = t.zero_run(i, min(g.ptrs_per_pmd - i, (end - addr + size - 1) // size))
            base = addr & ~(size - 1)
            t.set_many(SetOp.PTE, i, pfn_ptes(ctx, st, base, size, n, prot | _PAGE_PSE))
            st.pages_2m += n
            addr = last = base + n * size
            i += n
            continue
        if mask & PG_LEVEL_2M:
            t.set(SetOp.PTE, i, pfn_pte(ctx, st, addr & ~(size - 1), prot | _PAGE_PSE))
            st.pages_2m += 1
            last = nxt
            addr, i = nxt, i + 1
            continue
        t.sync()
        pte_page = st.alloc_low_page(ctx, "pte")
        last = phys_pte_init(ctx, st, pte_page, addr, end, new_prot)
        pmd_populate_kernel(ctx, t.ptr(i), pte_page)
        addr, i = nxt, i + 1
    t.sync()
    return last


def phys_pud_init(ctx: KernelContext, st: MmState, pud_page: int, addr: int, end: int, mask: int) -> int:
    """Model of ``phys_pud_init()`` (init_64.c @ v3.9): 1 GiB leaves where allowed, else PMD tables
    (``pud_populate``); present entries reused as at the level below."""
    g, mmu = ctx.pgt, ctx.pv.mmu
    t = TableRun(ctx, pud_page)
    last = end
    i, size = g.pud_index(addr), g.pud_size
    while i < g.ptrs_per_pud:
        nxt = (addr & ~(size - 1)) + size
        prot = __PAGE_KERNEL & st.default_kernel_pte_mask  # PAGE_KERNEL
        if addr >= end:
            if not st.e820_any_mapped(addr & ~(size - 1), nxt):
                t.set(SetOp.PUD, i, mmu.make_entry(0))
            addr, i = nxt, i + 1
            continue
        val = t.val(i)
        if val:
            if not val & _PAGE_PSE:
                t.sync()
                last = phys_pmd_init(ctx, st, ctx.va(val & g.pte_pfn_mask), addr, end, mask, prot)
                addr, i = nxt, i + 1
                continue
            if mask & PG_LEVEL_1G:
                last = nxt
                addr, i = nxt, i + 1
                continue
            prot = val & LARGE_FLAG_BITS
        elif mask & PG_LEVEL_1G:
            n = t.zero_run(i, min(g.ptrs_per_pud - i, (end - addr + size - 1) // size))
            base = addr & ~(size - 1)
            t.set_many(SetOp.PTE, i, pfn_ptes(ctx, st, base, size, n, __PAGE_KERNEL_LARGE & st.default_kernel_pte_mask))
            st.pages_1g += n
            addr = last = base + n * size
            i += n
            continue
        if mask & PG_LEVEL_1G:
            t.set(SetOp.PTE, i, pfn_pte(ctx, st, addr & ~(size - 1), __PAGE_KERNEL_LARGE & st.default_kernel_pte_mask))
            st.pages_1g += 1
            last = nxt
            addr, i = nxt, i + 1
            continue
        t.sync()
        pmd_page = st.alloc_low_page(ctx, "pmd")
        last = phys_pmd_init(ctx, st, pmd_page, addr, end, mask, prot)
        pud_populate(ctx, t.ptr(i), pmd_page)
        addr, i = nxt, i + 1
    t.sync()
    return last


def pmd_populate_kernel(ctx: KernelContext, pmd: VirtAddr, pte_page: int) -> None:
    """``pmd_populate_kernel`` (pgalloc.h): tell the hypervisor the page is now a PTE table, link it."""
    pa = ctx.pa(pte_page)
    ctx.pv.mmu.alloc_pte(Pfn(pa >> 12))
    ctx.pv.mmu.set_pmd(pmd, ctx.pv.mmu.make_entry(pa | DIRECT_MAP_TABLE_FLAGS))


def pud_populate(ctx: KernelContext, pud: VirtAddr, pmd_page: int) -> None:
    """``pud_populate`` (pgalloc.h): ``paravirt_alloc_pmd`` then ``set_pud``."""
    pa = ctx.pa(pmd_page)
    ctx.pv.mmu.alloc_pmd(Pfn(pa >> 12))
    ctx.pv.mmu.set_pud(pud, ctx.pv.mmu.make_entry(pa | DIRECT_MAP_TABLE_FLAGS))


def top_populate(ctx: KernelContext, pgd: VirtAddr, vaddr: int, pud_page: int) -> None:
    """Link a new pud page under the pgd: v3.9's ``pgd_populate`` (``set_pgd``); 6.1's folded-p4d
    ``p4d_populate_init`` (``set_p4d`` on ``p4d_offset(pgd, vaddr)``, the pgd entry itself). Both notify
    ``paravirt_alloc_pud`` first and link with ``_PAGE_TABLE``."""
    pa = ctx.pa(pud_page)
    mmu = ctx.pv.mmu
    mmu.alloc_pud(Pfn(pa >> 12))
    if ctx.profile.p4d_level:
        mmu.set_p4d(VirtAddr(p4d_offset(ctx, pgd, vaddr)), mmu.make_entry(pa | _PAGE_TABLE))
    else:
        mmu.set_pgd(pgd, mmu.make_entry(pa | _PAGE_TABLE))


def kernel_physical_mapping_init(ctx: KernelContext, st: MmState, start: int, end: int, mask: int) -> int:
    """Map [start, end) at ``__va`` into ``init_level4_pgt`` (reached via ``pgd_offset_k``)."""
    g = ctx.pgt
    vstart, vend = ctx.va(start), ctx.va(end)
    last = end
    while vstart < vend:
        pgd = VirtAddr(pgd_offset_pgd(g, ctx.layout.init_pgt, vstart))  # pgd_offset_k(vstart)
        nxt = min((vstart & ~(g.pgdir_size - 1)) + g.pgdir_size, vend)
        val = _val(ctx, pgd)
        if val:
            last = phys_pud_init(ctx, st, ctx.va(val & g.pte_pfn_mask), ctx.pa(vstart), ctx.pa(vend), mask)
            vstart = nxt
            continue
        pud_page = st.alloc_low_page(ctx, "pud")
        last = phys_pud_init(ctx, st, pud_page, ctx.pa(vstart), ctx.pa(vend), mask)
        top_populate(ctx, pgd, vstart, pud_page)
        vstart = nxt
    flush_tlb_all(ctx)
    return last


def cleanup_highmap(ctx: KernelContext, max_pfn_mapped: int, brk_end: int) -> int:
    """Model of ``cleanup_highmap()`` (init_64.c @ v3.9): clear ``level2_kernel_pgt`` entries outside
    [_text, roundup(_brk_end, 2 MiB)) with ``set_pmd(pmd, __pmd(0))`` (spec §3.8)."""
    lay, g, mmu = ctx.layout, ctx.pgt, ctx.pv.mmu
    vaddr = START_KERNEL_MAP
    vaddr_end = START_KERNEL_MAP + (max_pfn_mapped << 12 if max_pfn_mapped else 512 << 20)
    end = ((brk_end + g.pmd_size - 1) & ~(g.pmd_size - 1)) - 1
    cleared = 0
    pmd = lay["level2_kernel_pgt"]
    while vaddr + g.pmd_size - 1 < vaddr_end:
        if _val(ctx, pmd) and (vaddr < lay.text or vaddr > end):
            mmu.set_pmd(VirtAddr(pmd), mmu.make_entry(0))
            cleared += 1
        pmd += g.entry_size
        vaddr += g.pmd_size
    ctx.emit(Note(f"cleanup_highmap: {cleared} level2_kernel_pgt entries outside the image cleared"))
    return cleared
