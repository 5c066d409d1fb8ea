"""``init_mem_mapping`` under Xen PV (arch/x86/mm/init.c, init_64.c @ v6.1; spec §5.3): the direct map
of all of ``max_pfn`` in 4 KiB pages — Xen's CPUID hides PSE and 1 GiB pages from a PV guest, so
``probe_page_size_mask`` leaves only 4 KiB — built top-down (``memory_map_top_down``) with page-table
pages from BRK (``early_alloc_pgt_buf``) and then from memblock, every new table page made read-only
(``xen_alloc_pte_init`` also pins it as an L1, ``xen_alloc_pmd_init``) before it is linked by hypercall;
entries in existing (read-only) PTE pages are plain stores Xen emulates, entries in a page not yet linked
are plain stores into writable memory. Then ``load_cr3(swapper_pg_dir)``.

Differences: ``phys_pte_init`` on a page the model has just allocated writes the page's entries at once
(the same bytes as its loop of stores; the page is not a page table yet); clears of entries that are
already zero (``set_pXd_init(…, 0)`` past a range's end over non-RAM) are skipped, as they change nothing;
``init_trampoline``, ``early_memtest`` and the PCID/PTI probes do not touch the tables and are not run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earlymm.kernel.xen61.guest import (
    _PAGE_RW,
    _PAGE_TABLE,
    IDENTITY_FRAME_BIT,
    INVALID_P2M_ENTRY,
    PAGE_KERNEL,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SIZE,
    PTE_FLAGS_MASK,
    START_KERNEL_MAP,
    Xen61Guest,
)
from earlymm.kernel.xen61.memblock import Memblock
from earlymm.kernel.xen61.memory import E820_RAM
from earlymm.kernel.xen61.mmu_pv import (
    entry_table,
    index,
    make_lowmem_page_readonly,
    xen_alloc_pte_init,
    xen_set_pte_init,
    xen_write_cr3_init,
)

PUD_SIZE = 1 << 30
ISA_END = 0x100000


@dataclass
class PgtBuf:
    start: int
    end: int
    top: int


class InitMemMapping:
    """One run of ``init_mem_mapping`` (state: ``pgt_buf_*``, ``min_pfn_mapped``, ``can_use_brk_pgt``)."""

    def __init__(self, g: Xen61Guest, mb: Memblock, buf: PgtBuf) -> None:
        self.g, self.mb, self.buf = g, mb, buf
        self.min_pfn_mapped = 0
        self.can_use_brk_pgt = True
        self.allocated: list[int] = []

    # -- e820 ---------------------------------------------------------------------------------------------
    def e820_mapped_ram(self, start: int, end: int) -> bool:
        return any(t == E820_RAM and s < end and start < e for s, e, t in self.g.e820)

    # -- page-table pages -----------------------------------------------------------------------------------
    def alloc_low_page(self) -> int:
        g, buf = self.g, self.buf
        if buf.end + 1 > buf.top or not self.can_use_brk_pgt:
            ret = 0
            if self.min_pfn_mapped < g.max_pfn_mapped:
                ret = self.mb.alloc_range(PAGE_SIZE, PAGE_SIZE, self.min_pfn_mapped << PAGE_SHIFT,
                                          g.max_pfn_mapped << PAGE_SHIFT)
            if not ret and self.can_use_brk_pgt:
                at = (g.brk_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
                g.brk_end = at + PAGE_SIZE
                ret = g.pa(at)
            if not ret:
                g.bug("arch/x86/mm/init.c", "alloc_low_pages: can not alloc memory")
            pfn = ret >> PAGE_SHIFT
        else:
            pfn, buf.end = buf.end, buf.end + 1
        g.write(g.va(pfn << PAGE_SHIFT), bytes(PAGE_SIZE))  # clear_page
        self.allocated.append(pfn)
        return g.va(pfn << PAGE_SHIFT)

    # -- the levels -------------------------------------------------------------------------------------------
    def pte_values(self, paddr: int, n: int) -> np.ndarray:
        """``pfn_pte(pfn, PAGE_KERNEL)`` through ``xen_make_pte_init`` for ``n`` consecutive pfns, the p2m
        read through the guest's mapping of it (``__pfn_to_mfn``)."""
        g = self.g
        pfn0 = paddr >> PAGE_SHIFT
        mfns = np.full(n, INVALID_P2M_ENTRY, dtype=np.uint64)
        k = max(0, min(n, g.p2m_size - pfn0))
        if k:
            mfns[:k] = np.frombuffer(g.read(g.p2m_addr + 8 * pfn0, 8 * k), dtype="<u8")
        if k < n:  # past the list: __pfn_to_mfn's rule (xen_chk_extra_mem, then identity), for the run at once
            rest = np.arange(pfn0 + k, pfn0 + n, dtype=np.uint64)
            extra = np.zeros(n - k, dtype=bool)
            for s, cnt in g.extra_mem:
                extra |= (rest >= np.uint64(s)) & (rest < np.uint64(s + cnt))
            extra &= rest < np.uint64(g.max_p2m_pfn)
            mfns[k:] = np.where(extra, np.uint64(INVALID_P2M_ENTRY), rest | np.uint64(IDENTITY_FRAME_BIT))
        prot = g.massage(PAGE_KERNEL)
        pfns = np.arange(pfn0, pfn0 + n, dtype=np.uint64)
        si = g.si
        ro = (pfns >= si.first_p2m_pfn) & (pfns < si.first_p2m_pfn + si.nr_p2m_frames) \
            if si.mfn_list < START_KERNEL_MAP else np.zeros(n, dtype=bool)
        flags = np.where(ro, np.uint64(prot & ~_PAGE_RW & PTE_FLAGS_MASK), np.uint64(prot & PTE_FLAGS_MASK))
        real = (mfns & ~np.uint64(IDENTITY_FRAME_BIT | (1 << 63))) << np.uint64(PAGE_SHIFT)
        out: np.ndarray = np.where(mfns == np.uint64(INVALID_P2M_ENTRY), np.uint64(0), real | flags)
        return out

    def phys_pte_init(self, pte_page: int, paddr: int, paddr_end: int, fresh: bool) -> int:
        g = self.g
        paddr_last = paddr_end
        i = index(g.va(paddr), 12)
        base = paddr & ~(PMD_SIZE - 1)
        n_in = min(512, -(-(paddr_end - base) // PAGE_SIZE)) - i if paddr < paddr_end else 0
        vals = self.pte_values(paddr, n_in) if n_in > 0 else np.zeros(0, dtype=np.uint64)
        if fresh:  # a page nobody maps as a table yet: its stores land as they are
            page = np.zeros(512, dtype=np.uint64)
            page[i:i + n_in] = vals
            if n_in:
                g.write(pte_page, page.astype("<u8").tobytes())
                paddr_last = base + (i + n_in) * PAGE_SIZE
            return paddr_last
        old = np.frombuffer(g.read(pte_page, PAGE_SIZE), dtype="<u8")  # each entry read once, as the loop does
        for k in range(n_in):
            ptep = pte_page + 8 * (i + k)
            if old[i + k]:
                continue  # reuse the existing mapping (Xen's, read-only where it must be)
            xen_set_pte_init(g, ptep, int(vals[k]))
            paddr_last = base + (i + k + 1) * PAGE_SIZE
        for k in range(i + n_in, 512):  # past the end: clear what is not RAM (nothing here to clear)
            at = base + k * PAGE_SIZE
            if old[k] and not self.e820_mapped_ram(at, at + PAGE_SIZE):
                xen_set_pte_init(g, pte_page + 8 * k, 0)
        return paddr_last

    def phys_pmd_init(self, pmd_page: int, paddr: int, paddr_end: int) -> int:
        g = self.g
        paddr_last = paddr_end
        for i in range(index(g.va(paddr), 21), 512):
            pmd = pmd_page + 8 * i
            paddr_next = (paddr & ~(PMD_SIZE - 1)) + PMD_SIZE
            if paddr >= paddr_end:
                if g.rd(pmd) and not self.e820_mapped_ram(paddr & ~(PMD_SIZE - 1), paddr_next):
                    g.set_pmd_hyper(pmd, 0)
                paddr = paddr_next
                continue
            e = g.rd(pmd)
            if e:
                paddr_last = self.phys_pte_init(entry_table(g, e), paddr, paddr_end, False)
                paddr = paddr_next
                continue
            pte = self.alloc_low_page()
            paddr_last = self.phys_pte_init(pte, paddr, paddr_end, True)
            xen_alloc_pte_init(g, g.pa(pte) >> PAGE_SHIFT)  # pmd_populate_kernel_safe
            g.set_pmd_hyper(pmd, g.pte_pfn_to_mfn(g.pa(pte) | _PAGE_TABLE))
            paddr = paddr_next
        return paddr_last

    def phys_pud_init(self, pud_page: int, paddr: int, paddr_end: int) -> int:
        g = self.g
        paddr_last = paddr_end
        for i in range(index(g.va(paddr), 30), 512):
            pud = pud_page + 8 * i
            paddr_next = (paddr & ~(PUD_SIZE - 1)) + PUD_SIZE
            if paddr >= paddr_end:
                if g.rd(pud) and not self.e820_mapped_ram(paddr & ~(PUD_SIZE - 1), paddr_next):
                    g.set_pmd_hyper(pud, 0)
                paddr = paddr_next
                continue
            e = g.rd(pud)
            if e:
                paddr_last = self.phys_pmd_init(entry_table(g, e), paddr, paddr_end)
                paddr = paddr_next
                continue
            pmd = self.alloc_low_page()
            paddr_last = self.phys_pmd_init(pmd, paddr, paddr_end)
            make_lowmem_page_readonly(g, pmd)  # pud_populate_safe: xen_alloc_pmd_init
            g.set_pmd_hyper(pud, g.pte_pfn_to_mfn(g.pa(pmd) | _PAGE_TABLE))  # xen_set_pud_hyper
            paddr = paddr_next
        return paddr_last

    def init_memory_mapping(self, start: int, end: int) -> int:
        """``init_memory_mapping`` with 4 KiB pages only: ``kernel_physical_mapping_init`` (one PGD entry
        under ``PAGE_OFFSET`` covers 512 GiB), then ``add_pfn_range_mapped``."""
        g = self.g
        va = g.va(start)
        e = g.rd(g.sym("init_top_pgt") + 8 * index(va, 39))
        if not e or (g.va(end - 1) >> 39) != (va >> 39):
            g.bug("arch/x86/mm/init_64.c", "a direct map beyond the first 512 GiB is not modelled")
        ret = self.phys_pud_init(entry_table(g, e), start, end)
        g.max_pfn_mapped = max(g.max_pfn_mapped, ret >> PAGE_SHIFT)
        return ret >> PAGE_SHIFT

    def init_range_memory_mapping(self, r_start: int, r_end: int) -> int:
        mapped = 0
        for s, e in self.mb.memory:
            start, end = min(max(s, r_start), r_end), min(max(e, r_start), r_end)
            if start >= end:
                continue
            self.can_use_brk_pgt = max(start, self.buf.end << PAGE_SHIFT) >= min(end, self.buf.top << PAGE_SHIFT)
            self.init_memory_mapping(start, end)
            mapped += end - start
            self.can_use_brk_pgt = True
        return mapped

    def memory_map_top_down(self, map_start: int, map_end: int) -> None:
        g = self.g
        addr = self.mb.alloc_range(PMD_SIZE, PMD_SIZE, map_start, map_end)
        if addr:
            self.mb.free(addr, PMD_SIZE)
            real_end = addr + PMD_SIZE
        else:
            real_end = max(map_start, map_end & ~(PMD_SIZE - 1))
        step, mapped = PMD_SIZE, 0
        g.max_pfn_mapped = 0
        self.min_pfn_mapped = real_end >> PAGE_SHIFT
        last = real_end
        while last > map_start:
            start = max((last - 1) & ~(step - 1), map_start) if last > step else map_start
            mapped += self.init_range_memory_mapping(start, last)
            last = start
            self.min_pfn_mapped = last >> PAGE_SHIFT
            if mapped >= step:
                step <<= 21 - PAGE_SHIFT - 1
        if real_end < map_end:
            self.init_range_memory_mapping(real_end, map_end)

    def run(self) -> None:
        g = self.g
        end = g.max_pfn << PAGE_SHIFT
        self.init_memory_mapping(0, ISA_END)
        self.memory_map_top_down(ISA_END, end)
        xen_write_cr3_init(g, g.pa(g.sym("init_top_pgt")))  # load_cr3(swapper_pg_dir)
        g.m.cpu.flush_tlb(include_global=True)
        g.note(f"init_mem_mapping: direct map to pfn {g.max_pfn_mapped:#x} in 4 KiB pages; "
               f"{len(self.allocated)} table page(s), {sum(1 for p in self.allocated if p < self.buf.top)} "
               "from BRK")


