"""The 64-bit direct-map builders and ``cleanup_highmap`` (arch/x86/mm/init_64.c @ v3.9; 6.1's
``__kernel_physical_mapping_init``), one function per level as in Linux. Tables are reached at ``__va``
addresses, so while CR3 is still the early table each access may fault and be materialised by the early
#PF handler (spec §3.8). Entries are written with the pv wrappers Linux uses there (``set_pte``,
``set_pmd``, ``pmd_populate_kernel`` …) and read through ``pXd_val``.
"""

from __future__ import annotations

from array import array

from earlymm.arch.addr import Pfn, VirtAddr
from earlymm.arch.progression import progression_bytes
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
from earlymm.kernel.paravirt.ops import SetOp, entries_from_bytes
from earlymm.kernel.pgtable import PgLevel, p4d_offset, pgd_offset_pgd
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


def pfn_ptes(ctx: KernelContext, st: MmState, base: int, step: int, n: int, prot: int) -> array[int]:
    """``pfn_pte`` for ``n`` consecutive pages of ``step`` bytes from ``base``.

    Where no address bit of the run meets a bit of ``prot`` or a bit the mask drops — the builders' case:
    ``step``-aligned blocks, flags in the low 12 bits and bit 63 — ``(pa | prot) & mask`` is
    ``pa + (prot & mask)``, so the run is an arithmetic progression, made without a Python step per entry
    (``arch/progression.py``; a 64 TiB direct map in 2 MiB pages has 32 million)."""
    mask, top = st.supported_pte_mask, base + step * n
    pa_bits = ((1 << max(top - 1, 0).bit_length()) - 1) & -step if step & (step - 1) == 0 else -1
    if n and base % step == 0 and not pa_bits & (prot | ~mask):
        run = progression_bytes(base + (prot & mask), step, n)
        if run is not None:
            return ctx.pv.mmu.make_entries(entries_from_bytes(run))
    return ctx.pv.mmu.make_entries(array("Q", [((base + step * k) | prot) & mask for k in range(n)]))


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
    i, size, ptrs = g.pmd_index(addr), g.pmd_size, g.ptrs_per_pmd
    while i < ptrs:
        nxt = (addr & ~(size - 1)) + size
        new_prot = prot
        if addr >= end:
            skip = st.ram_run(addr & ~(size - 1), size, ptrs - i)  # entries left alone: they cover RAM
            if skip:
                addr, i = (addr & ~(size - 1)) + skip * size, i + skip
                continue
            n = st.hole_run(addr & ~(size - 1), size, ptrs - i)  # past the end and no RAM: cleared
            t.set_many(SetOp.PMD, i, mmu.make_entries(array("Q", bytes(8 * n))))
            addr, i = (addr & ~(size - 1)) + n * size, i + n
            continue
        val = t.val(i)
        if val and val & _PAGE_PSE and mask & PG_LEVEL_2M:
            n = t.large_run(i, min(ptrs - i, (end - addr + size - 1) // size))  # large leaves kept
            addr = last = (addr & ~(size - 1)) + n * size
            i += n
            continue
        if val:
            if not val & _PAGE_PSE:
                t.sync()
                last = phys_pte_init(ctx, st, ctx.va(val & g.pte_pfn_mask), addr, end, prot)
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
    i, size, ptrs = g.pud_index(addr), g.pud_size, g.ptrs_per_pud
    while i < ptrs:
        nxt = (addr & ~(size - 1)) + size
        prot = __PAGE_KERNEL & st.default_kernel_pte_mask  # PAGE_KERNEL
        if addr >= end:
            skip = st.ram_run(addr & ~(size - 1), size, ptrs - i)  # entries left alone: they cover RAM
            if skip:
                addr, i = (addr & ~(size - 1)) + skip * size, i + skip
                continue
            n = st.hole_run(addr & ~(size - 1), size, ptrs - i)  # past the end and no RAM: cleared
            t.set_many(SetOp.PUD, i, mmu.make_entries(array("Q", bytes(8 * n))))
            addr, i = (addr & ~(size - 1)) + n * size, i + n
            continue
        val = t.val(i)
        if val and val & _PAGE_PSE and mask & PG_LEVEL_1G:
            n = t.large_run(i, min(ptrs - i, (end - addr + size - 1) // size))  # large leaves kept
            addr = last = (addr & ~(size - 1)) + n * size
            i += n
            continue
        if val:
            if not val & _PAGE_PSE:
                t.sync()
                last = phys_pmd_init(ctx, st, ctx.va(val & g.pte_pfn_mask), addr, end, mask, prot)
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


def phys_p4d_init(ctx: KernelContext, st: MmState, p4d_page: int, paddr: int, paddr_end: int, mask: int) -> int:
    """Model of 6.1 ``phys_p4d_init()``: with the p4d folded the page *is* a pud page; in 5-level mode one
    pud table per 512 GiB, linked by ``p4d_populate_init`` (``paravirt_alloc_pud`` + ``set_p4d``)."""
    g, mmu = ctx.pgt, ctx.pv.mmu
    if g.folded(PgLevel.P4D):
        return phys_pud_init(ctx, st, p4d_page, paddr, paddr_end, mask)
    vaddr, vend = ctx.va(paddr), ctx.va(paddr_end)
    last = paddr_end
    p4d_size = 1 << g.p4d_shift
    while vaddr < vend:
        p4d = VirtAddr(p4d_page + g.entry_size * g.p4d_index(vaddr))
        vnext = (vaddr & ~(p4d_size - 1)) + p4d_size
        val = _val(ctx, p4d)
        if val:
            last = phys_pud_init(ctx, st, ctx.va(val & g.pte_pfn_mask), ctx.pa(vaddr), paddr_end, mask)
        else:
            pud_page = st.alloc_low_page(ctx, "pud")
            last = phys_pud_init(ctx, st, pud_page, ctx.pa(vaddr), paddr_end, mask)
            pa = ctx.pa(pud_page)
            mmu.alloc_pud(Pfn(pa >> 12))
            mmu.set_p4d(p4d, mmu.make_entry(pa | _PAGE_TABLE))
        vaddr = vnext
    return last


def top_populate(ctx: KernelContext, pgd: VirtAddr, vaddr: int, page: int) -> None:
    """Link a new table under the pgd: v3.9's ``pgd_populate`` (``set_pgd`` of a pud page); 6.1's
    folded-p4d ``p4d_populate_init`` (``set_p4d`` on ``p4d_offset(pgd, vaddr)``, the pgd entry itself), or
    in 5-level mode ``pgd_populate_init`` of a p4d page. Each notifies ``paravirt_alloc_*`` first and links
    with ``_PAGE_TABLE``."""
    pa = ctx.pa(page)
    mmu = ctx.pv.mmu
    if not ctx.pgt.folded(PgLevel.P4D):
        mmu.alloc_p4d(Pfn(pa >> 12))
        mmu.set_pgd(pgd, mmu.make_entry(pa | _PAGE_TABLE))
        return
    mmu.alloc_pud(Pfn(pa >> 12))
    if ctx.profile.p4d_level:
        mmu.set_p4d(VirtAddr(p4d_offset(ctx, pgd, vaddr)), mmu.make_entry(pa | _PAGE_TABLE))
    else:
        mmu.set_pgd(pgd, mmu.make_entry(pa | _PAGE_TABLE))


def kernel_physical_mapping_init(ctx: KernelContext, st: MmState, start: int, end: int, mask: int) -> int:
    """Map [start, end) at ``__va`` into ``init_level4_pgt`` (reached via ``pgd_offset_k``); 6.1's
    ``__kernel_physical_mapping_init``, through ``phys_p4d_init``."""
    g = ctx.pgt
    vstart, vend = ctx.va(start), ctx.va(end)
    last = end
    below = "pud" if g.folded(PgLevel.P4D) else "p4d"
    while vstart < vend:
        pgd = VirtAddr(pgd_offset_pgd(g, ctx.layout.init_pgt, vstart))  # pgd_offset_k(vstart)
        nxt = min((vstart & ~(g.pgdir_size - 1)) + g.pgdir_size, vend)
        val = _val(ctx, pgd)
        if val:
            last = phys_p4d_init(ctx, st, ctx.va(val & g.pte_pfn_mask), ctx.pa(vstart), ctx.pa(vend), mask)
            vstart = nxt
            continue
        page = st.alloc_low_page(ctx, below)
        last = phys_p4d_init(ctx, st, page, ctx.pa(vstart), ctx.pa(vend), mask)
        top_populate(ctx, pgd, vstart, page)
        vstart = nxt
    flush_tlb_all(ctx)
    return last


def cleanup_highmap(ctx: KernelContext, max_pfn_mapped: int, brk_end: int) -> int:
    """Model of ``cleanup_highmap()`` (init_64.c @ v3.9 and v6.1): clear ``level2_kernel_pgt`` entries outside
    [_text, roundup(_brk_end, 2 MiB)) with ``set_pmd(pmd, __pmd(0))`` over KERNEL_IMAGE_SIZE, or up to
    ``max_pfn_mapped`` where Xen set it (spec §3.8)."""
    lay, g, mmu = ctx.layout, ctx.pgt, ctx.pv.mmu
    vaddr = START_KERNEL_MAP
    vaddr_end = START_KERNEL_MAP + (max_pfn_mapped << 12 if max_pfn_mapped else ctx.profile.kernel_image_size)
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
