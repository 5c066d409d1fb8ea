"""``paging_init`` and ``pagetable_init`` with their builders (arch/i386/mm/init.c @ 2.6.21, spec §5.6).

Seed 002 (commit b239fb25, with Eric Biederman's follow-up) made the builders allocate a page-table page
only where none is present — so a hypervisor's pre-built table can be completed rather than replaced —
while the leaf entries (PSE pmds, PTEs) are always rewritten, so PSE, PGE and the right permissions
replace whatever head.S left behind. Every table is reached at its kernel virtual address through the
MMU, on whichever directory the CPU runs: head.S's non-PAE one until ``paging_init`` reloads CR3.

The source text read is arch/i386/mm/init.c of 2.6.22/2.6.23, whose builders are b239fb25's; where the
2.6.21 text differs only in form (``page_table_range_init`` testing the entries itself before calling
the builders, which test again) the behaviour is the same.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

import numpy as np

from earlymm.arch.addr import PhysAddr, VirtAddr
from earlymm.arch.flags import Cr4, Efer
from earlymm.hw.faults import Halt
from earlymm.kernel.cpufeature import X86Feature, boot_cpu_has
from earlymm.kernel.events import Note
from earlymm.kernel.i386.consts import (
    _PAGE_GLOBAL,
    _PAGE_NX_PAE,
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_TABLE,
    PAGE_OFFSET,
    PAGE_SHIFT,
    PAGE_SIZE,
    U32,
)
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.i386.events import LeafRun, TablePage
from earlymm.kernel.i386.paravirt import paravirt_alloc_pd, paravirt_alloc_pt, set_pgd, set_pmd
from earlymm.kernel.paravirt.ops import SetOp
from earlymm.kernel.pgtable import pmd_offset, pte_offset_kernel, pud_offset
from earlymm.kernel.phases import Phase


def _bug(ctx: I386Context, what: str) -> None:
    ctx.print(f"kernel BUG at arch/i386/mm/init.c: {what}")
    raise Halt(f"kernel BUG: {what}", outcome="oops", console="\n".join(ctx.console))


def _page_of(ctx: I386Context, val: int) -> int:
    return ctx.entry_val(val) & ctx.pgt.pte_pfn_mask


def pfn_pte(ctx: I386Context, pfn: int, prot: int) -> int:
    """``pfn_pte``/``pfn_pmd``: PAE masks the value with ``__supported_pte_mask`` (no NX without NX)."""
    val = (pfn << PAGE_SHIFT) | prot
    return val & ctx.mm.supported_pte_mask if ctx.pae else val & U32


def one_md_table_init(ctx: I386Context, pgd: int, va: int) -> int:
    """Model of one_md_table_init(), arch/i386/mm/init.c @ 2.6.21; differences: none. PAE: a pmd page only
    if the pgd entry lacks _PAGE_PRESENT (bootmem, ``paravirt_alloc_pd``, ``set_pgd`` with P only); else
    the present one is kept. Returns the pmd table's address (2-level: the pgd entry itself, folded)."""
    with ctx.running("one_md_table_init"):
        if ctx.pae:
            val = ctx.rd(pgd, 8)
            if not val & _PAGE_PRESENT:
                pa = ctx.mm.bootmem.alloc_low(PAGE_SIZE, "one_md_table_init: pmd page")
                paravirt_alloc_pd(ctx, pa >> PAGE_SHIFT)
                set_pgd(ctx, pgd, pa | _PAGE_PRESENT)
                ctx.emit(TablePage(ctx.fn, "pmd", "allocated", pa, va))
                if pmd_offset(ctx, pud_offset(ctx, pgd, 0), 0) != ctx.va(pa):
                    _bug(ctx, "one_md_table_init: the new pmd is not where the pgd entry points")
            else:
                ctx.emit(TablePage(ctx.fn, "pmd", "kept", _page_of(ctx, val), va))
        return pmd_offset(ctx, pud_offset(ctx, pgd, 0), 0)


def one_page_table_init(ctx: I386Context, pmd: int, va: int) -> int:
    """Model of one_page_table_init(), arch/i386/mm/init.c @ 2.6.21; differences: none. A pte page only if
    the pmd entry lacks _PAGE_PRESENT (bootmem, ``paravirt_alloc_pt``, ``set_pmd`` with _PAGE_TABLE);
    otherwise the page the entry points at is kept. Returns ``pte_offset_kernel(pmd, 0)``."""
    with ctx.running("one_page_table_init"):
        val = ctx.rd(pmd, ctx.pgt.entry_size)
        if not val & _PAGE_PRESENT:
            pa = ctx.mm.bootmem.alloc_low(PAGE_SIZE, "one_page_table_init: pte page")
            paravirt_alloc_pt(ctx, pa >> PAGE_SHIFT)
            set_pmd(ctx, pmd, pa | _PAGE_TABLE)
            ctx.emit(TablePage(ctx.fn, "pte", "allocated", pa, va))
            if pte_offset_kernel(ctx, pmd, 0) != ctx.va(pa):
                _bug(ctx, "one_page_table_init: BUG_ON(page_table != pte_offset_kernel(pmd, 0))")
        else:
            ctx.emit(TablePage(ctx.fn, "pte", "kept", _page_of(ctx, val), va))
        return pte_offset_kernel(ctx, pmd, 0)


def page_table_range_init(ctx: I386Context, start: int, end: int, pgd_base: int, what: str) -> None:
    """Model of page_table_range_init(), arch/i386/mm/init.c @ 2.6.21; differences: none. The page-table
    structure for [start, end) — pmd and pte pages where missing, no leaves (set_fixmap and kmap fill
    those later). ``end`` may be 0: the fixmap ends at 4 GiB and the 32-bit ``vaddr`` wraps there."""
    g, w = ctx.pgt, ctx.pgt.entry_size
    with ctx.running(f"page_table_range_init({what})"):
        vaddr = start
        pgd_idx, pmd_idx = g.pgd_index(vaddr), g.pmd_index(vaddr)
        pgd = pgd_base + w * pgd_idx
        while pgd_idx < g.ptrs_per_pgd and vaddr != end:
            pmd = one_md_table_init(ctx, pgd, vaddr) + w * g.pmd_index(vaddr)
            while pmd_idx < g.ptrs_per_pmd and vaddr != end:
                one_page_table_init(ctx, pmd, vaddr)
                vaddr = (vaddr + g.pmd_size) & U32
                pmd, pmd_idx = pmd + w, pmd_idx + 1
            pmd_idx = 0
            pgd, pgd_idx = pgd + w, pgd_idx + 1


def is_kernel_text(ctx: I386Context, addr: int) -> bool:
    return PAGE_OFFSET <= addr <= ctx.sym("__init_end")


class LeafWriter:
    """Consecutive leaf stores of ``kernel_physical_mapping_init`` handed to ``pv_ops.set_entries`` as one
    run (the same bytes and faults as one ``set_pmd``/``set_pte`` per entry: nothing else touches memory in
    between). The caller flushes before any other memory access. Reports a ``LeafRun`` per run."""

    def __init__(self, ctx: I386Context, op: SetOp, level: str) -> None:
        self.ctx, self.op, self.level = ctx, op, level
        self.start = 0
        self.vals: list[int] = []

    def add(self, ptr: int, val: int) -> None:
        if self.vals and ptr != self.start + self.ctx.pgt.entry_size * len(self.vals):
            self.flush()
        if not self.vals:
            self.start = ptr
        self.vals.append(self.ctx.pv.mmu.make_entry(val))

    def flush(self) -> None:
        if not self.vals:
            return
        ctx, w = self.ctx, self.ctx.pgt.entry_size
        res = ctx.cpu.mmu.probe(self.start)  # the report's "present before": read aside, no machine effect
        old = np.frombuffer(ctx.platform.mem.read(res.pa, w * len(self.vals)), dtype="<u8" if w == 8 else "<u4") \
            if res.ok else np.zeros(0, dtype=np.uint64)
        present = int(np.count_nonzero(old & _PAGE_PRESENT))
        with ctx.watching(self.start, w * len(self.vals)):
            ctx.pv.mmu.set_entries(self.op, VirtAddr(self.start), array("Q", self.vals))
        table = res.pa & ~0xFFF if res.ok else 0
        ctx.emit(LeafRun(ctx.fn, self.level, table, (res.pa & 0xFFF) // w, len(self.vals), present, self.vals[0]))
        self.vals = []


def kernel_physical_mapping_init(ctx: I386Context, pgd_base: int) -> None:
    """Model of kernel_physical_mapping_init(), arch/i386/mm/init.c @ 2.6.21 (as merged in b239fb25);
    differences: runs of leaf stores are batched (``LeafWriter``). Lowmem [0, max_low_pfn) at PAGE_OFFSET:
    with PSE one large pmd per PMD_SIZE — PAGE_KERNEL_LARGE_EXEC where its first or last byte is kernel
    text (up to ``__init_end``) — else pte pages with PAGE_KERNEL(_EXEC) per page. Leaves are written
    whether present or not; table pages come from ``one_md_table_init``/``one_page_table_init``."""
    g, w, mm = ctx.pgt, ctx.pgt.entry_size, ctx.mm
    pse = boot_cpu_has(ctx.cpu, X86Feature.PSE)
    with ctx.running("kernel_physical_mapping_init"):
        large = LeafWriter(ctx, SetOp.PMD, "pmd")
        pfn = 0
        for pgd_idx in range(g.pgd_index(PAGE_OFFSET), g.ptrs_per_pgd):
            pgd = pgd_base + w * pgd_idx
            if ctx.pae:
                large.flush()  # one_md_table_init reads the pgd entry
            pmd = one_md_table_init(ctx, pgd, (pgd_idx << g.pgdir_shift) & U32)
            if pfn >= mm.max_low_pfn:
                continue
            pmd_idx = 0
            while pmd_idx < g.ptrs_per_pmd and pfn < mm.max_low_pfn:
                address = (pfn * PAGE_SIZE + PAGE_OFFSET) & U32
                if pse:
                    address2 = ((pfn + g.ptrs_per_pte - 1) * PAGE_SIZE + PAGE_OFFSET + PAGE_SIZE - 1) & U32
                    text = is_kernel_text(ctx, address) or is_kernel_text(ctx, address2)
                    prot = (mm.page_kernel_exec if text else mm.page_kernel) | _PAGE_PSE
                    large.add(pmd, pfn_pte(ctx, pfn, prot))
                    pfn += g.ptrs_per_pte
                else:
                    pte = one_page_table_init(ctx, pmd, address)
                    ptes = LeafWriter(ctx, SetOp.PTE, "pte")
                    for _ofs in range(g.ptrs_per_pte):
                        if pfn >= mm.max_low_pfn:
                            break
                        prot = mm.page_kernel_exec if is_kernel_text(ctx, address) else mm.page_kernel
                        ptes.add(pte, pfn_pte(ctx, pfn, prot))
                        pte, pfn, address = pte + w, pfn + 1, (address + PAGE_SIZE) & U32
                    ptes.flush()
                pmd, pmd_idx = pmd + w, pmd_idx + 1
        large.flush()


def set_in_cr4(ctx: I386Context, mask: int) -> None:
    """``set_in_cr4``: read-modify-write CR4 through ``paravirt_ops`` (read_cr4/write_cr4)."""
    ctx.pv.cpu.write_cr4(ctx.pv.cpu.read_cr4() | mask)


def permanent_kmaps_init(ctx: I386Context, pgd_base: int) -> None:
    """Model of permanent_kmaps_init(), arch/i386/mm/init.c @ 2.6.21 (CONFIG_HIGHMEM); differences: none.
    The pte page of the persistent kmap area [PKMAP_BASE, + LAST_PKMAP pages); ``pkmap_page_table`` is
    its first pte, found by walking from swapper_pg_dir."""
    g = ctx.pgt
    vaddr = ctx.profile.pkmap_base(ctx.pae, g.pmd_size)
    page_table_range_init(ctx, vaddr, vaddr + PAGE_SIZE * ctx.profile.last_pkmap(ctx.pae), pgd_base, "pkmap")
    pgd = ctx.sym("swapper_pg_dir") + g.entry_size * g.pgd_index(vaddr)
    ctx.mm.pkmap_page_table = pte_offset_kernel(ctx, pmd_offset(ctx, pud_offset(ctx, pgd, vaddr), vaddr), vaddr)


def pagetable_init(ctx: I386Context) -> Iterator[Phase]:
    """Model of pagetable_init(), arch/i386/mm/init.c @ 2.6.21; differences: none (remap_numa_kva is a
    no-op without NUMA). Yields after the start hook and at the end (the model's stop points).

    ``paravirt_ops.pagetable_setup_start`` first, then PSE and PGE in CR4 (PGE also ORs _PAGE_GLOBAL into
    __PAGE_KERNEL and __PAGE_KERNEL_EXEC), lowmem, the fixmap's page tables, the kmap area's, and
    ``paravirt_ops.pagetable_setup_done``."""
    base = ctx.sym("swapper_pg_dir")
    g = ctx.pgt
    with ctx.running("pagetable_init"):
        ctx.pv.init.pagetable_setup_start(VirtAddr(base))
    yield Phase.PAGETABLE_SETUP_START
    with ctx.running("pagetable_init"):
        if boot_cpu_has(ctx.cpu, X86Feature.PSE):
            set_in_cr4(ctx, int(Cr4.PSE))
        if boot_cpu_has(ctx.cpu, X86Feature.PGE):
            set_in_cr4(ctx, int(Cr4.PGE))
            ctx.mm.page_kernel |= _PAGE_GLOBAL
            ctx.mm.page_kernel_exec |= _PAGE_GLOBAL
        kernel_physical_mapping_init(ctx, base)
        prof = ctx.profile
        vaddr = prof.fix_to_virt(prof.end_of_fixed_addresses - 1) & ~(g.pmd_size - 1)
        end = (prof.fixaddr_top + g.pmd_size - 1) & ~(g.pmd_size - 1) & U32
        page_table_range_init(ctx, vaddr, end, base, "fixmap")
        permanent_kmaps_init(ctx, base)
        ctx.pv.init.pagetable_setup_done(VirtAddr(base))
    yield Phase.PAGETABLE_INIT


def set_nx(ctx: I386Context) -> None:
    """Model of set_nx(), arch/i386/mm/init.c @ 2.6.21 (PAE only); differences: EFER is written on the CPU
    model directly (2.6.21's rdmsr/wrmsr). CPUID 0x80000001 EDX bit 20 and no ``noexec=off``: EFER.NX on,
    _PAGE_NX joins __supported_pte_mask."""
    cpu, mm = ctx.cpu, ctx.mm
    if boot_cpu_has(cpu, X86Feature.PAE) and cpu.cpuid(0x8000_0000)[0] > 0x8000_0001 \
            and cpu.cpuid(0x8000_0001)[3] >> 20 & 1 and not mm.disable_nx:
        cpu.write_efer(cpu.regs.efer | int(Efer.NXE))
        mm.nx_enabled = True
        mm.supported_pte_mask |= _PAGE_NX_PAE


def kmap_init(ctx: I386Context) -> None:
    """Model of kmap_init(), arch/i386/mm/init.c @ 2.6.21; differences: none. ``kmap_pte`` = the pte of
    FIX_KMAP_BEGIN, found by walking the new tables (``kmap_get_fixmap_pte``)."""
    g, vaddr = ctx.pgt, ctx.profile.fix_to_virt(ctx.profile.fix_kmap_begin)
    pgd = ctx.sym("swapper_pg_dir") + g.entry_size * g.pgd_index(vaddr)  # pgd_offset_k
    ctx.mm.kmap_pte = pte_offset_kernel(ctx, pmd_offset(ctx, pud_offset(ctx, pgd, vaddr), vaddr), vaddr)


def paging_init(ctx: I386Context) -> Iterator[Phase]:
    """Model of paging_init(), arch/i386/mm/init.c @ 2.6.21; differences: none. PAE: ``set_nx``; then
    ``pagetable_init``, ``load_cr3(swapper_pg_dir)``, CR4.PAE (PAE kernels: the CPU switches to PAE paging
    on swapper_pg_dir's PDPT here), ``__flush_tlb_all`` and ``kmap_init``."""
    with ctx.running("paging_init"):
        if ctx.pae:
            set_nx(ctx)
            if ctx.mm.nx_enabled:
                ctx.print("NX (Execute Disable) protection: active")
    yield from pagetable_init(ctx)
    with ctx.running("paging_init"):
        ctx.pv.mmu.write_cr3(PhysAddr(ctx.pa_symbol("swapper_pg_dir")))  # load_cr3(swapper_pg_dir)
        if ctx.pae and boot_cpu_has(ctx.cpu, X86Feature.PAE):
            set_in_cr4(ctx, int(Cr4.PAE))
        if boot_cpu_has(ctx.cpu, X86Feature.PGE):  # __flush_tlb_all
            ctx.pv.mmu.flush_tlb_kernel()
        else:
            ctx.pv.mmu.flush_tlb_user()
        kmap_init(ctx)
        ctx.emit(Note(f"paging_init: CR3 = swapper_pg_dir ({ctx.pa_symbol('swapper_pg_dir'):#x}), "
                      f"{'PAE' if ctx.pae else '2-level'} paging; kmap_pte {ctx.mm.kmap_pte:#x}"))
    yield Phase.PAGING_INIT
