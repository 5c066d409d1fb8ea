"""2.6.21's page-table builders after seed 002 (arch/i386/mm/init.c, spec §5.6): a table page only where
none is present, leaf entries rewritten whatever they held; the fixmap and kmap areas; paging_init's
switch. Expected values are from the source: PAGE_KERNEL = P RW A D (| NX with PAE and NX) | G with PGE,
PAGE_KERNEL_EXEC without NX, *_LARGE with PSE; text is ``PAGE_OFFSET <= addr <= __init_end``; lowmem
ends at MAXMEM (896 MiB); bootmem hands out the lowest free page, and pages 0 (BIOS), 1 (SMP), 2 (ACPI
S3 wakeup code) and 3 (the SMP trampoline) are taken before paging_init.
"""

from __future__ import annotations

import numpy as np

from earlymm.arch.flags import Cr4, Efer
from earlymm.arch.modes import PagingMode
from earlymm.kernel.i386.events import BootmemAlloc, LeafRun, TablePage
from earlymm.kernel.i386.init import page_table_range_init
from earlymm.kernel.i386.paravirt import NativeInitOps, native_pv_ops, set_pgd
from tests.kernel.i386_support import PAGE_OFFSET, phys, run, u32s, u64s

P_RW_A_D, PSE, G, NX = 0x063, 0x080, 0x100, 1 << 63
LOWMEM = 896 << 20
FIRST_FREE_PAGE = 0x4000  # pages 0-3 taken before paging_init (see the module docstring)
# fixmap.h @ 2.6.21 (reference config): FIX_HOLE, FIX_VDSO, FIX_APIC_BASE, 64 IO-APIC slots, then FIX_KMAP_BEGIN
FIX_KMAP_BEGIN = 3 + 64
KMAP_VA = 0xFFFF_F000 - (FIX_KMAP_BEGIN << 12)


def _init_end(r: object) -> int:
    return r.ctx.layout["__init_end"]  # type: ignore[attr-defined, no-any-return]


def test_non_pae_without_pse_keeps_head_s_pte_pages_and_rewrites_every_pte() -> None:
    r = run(False, pse=False)
    pd, pg0 = phys(r, "swapper_pg_dir"), phys(r, "pg0")
    kept = [(e.level, e.pa, e.va) for e in r.ctx.trace.events if isinstance(e, TablePage) and e.action == "kept"]
    assert kept[:2] == [("pte", pg0, PAGE_OFFSET), ("pte", pg0 + 0x1000, PAGE_OFFSET + (4 << 20))]
    for k in range(2):  # head.S's 0x007 PTEs are now PAGE_KERNEL | _PAGE_GLOBAL (no NX without PAE)
        ptes = np.frombuffer(r.ctx.platform.mem.read(pg0 + 0x1000 * k, 4096), dtype="<u4")
        want = (np.arange(1024, dtype=np.uint64) + 1024 * k) << 12 | (P_RW_A_D | G)
        assert np.array_equal(ptes.astype(np.uint64), want)
    runs = [e for e in r.ctx.trace.events if isinstance(e, LeafRun) and e.fn == "kernel_physical_mapping_init"]
    assert [(e.count, e.present) for e in runs[:3]] == [(1024, 1024), (1024, 1024), (1024, 0)]
    assert u32s(r, pd + 4 * 770, 1)[0] == FIRST_FREE_PAGE | 0x067  # the first new pte page, _PAGE_TABLE
    # the identity PDE 0 still points at pg0's first page, so the shared PTEs changed under it too
    res = r.ctx.cpu.mmu.probe(0x10_0000)
    assert u32s(r, pd, 1)[0] & ~0xFFF == pg0 and res.pa == 0x10_0000 and not res.user_page


def test_non_pae_with_pse_rewrites_the_kernel_pdes_as_4m_pages() -> None:
    r = run(False)
    pdes = u32s(r, phys(r, "swapper_pg_dir") + 4 * 768, 256)
    assert pdes[:224] == tuple(i << 22 | P_RW_A_D | PSE | G for i in range(224))  # 896 MiB
    assert pdes[224:254] == (0,) * 30  # vmalloc: nothing yet
    assert pdes[254] & 1 and pdes[255] & 1  # the pkmap and fixmap pte pages
    runs = [e for e in r.ctx.trace.events if isinstance(e, LeafRun) and e.fn == "kernel_physical_mapping_init"]
    assert [(e.level, e.index, e.count, e.present) for e in runs] == [("pmd", 768, 224, 2)]


def test_pae_with_pse_and_nx_maps_lowmem_with_2m_pages_nx_outside_text() -> None:
    r = run(True)
    pmd_pa = u64s(r, phys(r, "swapper_pg_dir"), 4)[3] & ~0xFFF
    pmds = u64s(r, pmd_pa, 512)
    init_end = _init_end(r)
    for i in range(448):
        text = PAGE_OFFSET + (i << 21) <= init_end  # is_kernel_text(first) || is_kernel_text(last)
        assert pmds[i] == i << 21 | P_RW_A_D | PSE | G | (0 if text else NX), i
    assert pmds[448:510] == (0,) * 62 and pmds[510] & 1 and pmds[511] & 1
    assert r.ctx.cpu.regs.efer & Efer.NXE


def test_pae_without_nx_has_no_nx_bits() -> None:
    r = run(True, nx=False)
    pmd_pa = u64s(r, phys(r, "swapper_pg_dir"), 4)[3] & ~0xFFF
    assert not any(e >> 63 for e in u64s(r, pmd_pa, 512)) and not r.ctx.cpu.regs.efer & Efer.NXE
    assert "NX (Execute Disable) protection: active" not in r.console


def test_pae_without_pse_builds_pte_pages_with_per_page_nx() -> None:
    r = run(True, pse=False)
    pmd_pa = u64s(r, phys(r, "swapper_pg_dir"), 4)[3] & ~0xFFF
    init_end = _init_end(r)
    last_text_pfn = (init_end - PAGE_OFFSET) >> 12
    for pfn in (0, 0x100, last_text_pfn, last_text_pfn + 1, 0x37FFF):
        pte_page = u64s(r, pmd_pa + 8 * (pfn >> 9), 1)[0] & ~0xFFF
        want = pfn << 12 | P_RW_A_D | G | (0 if pfn <= last_text_pfn else NX)
        assert u64s(r, pte_page + 8 * (pfn & 511), 1)[0] == want, hex(pfn)
    allocated = [e for e in r.ctx.trace.events if isinstance(e, TablePage) and e.action == "allocated"]
    assert [e.level for e in allocated].count("pte") == 448 + 2  # lowmem + fixmap + pkmap


def test_fixmap_and_kmap_tables_and_kmap_pte() -> None:
    for pae, per_page in ((False, 4), (True, 8)):
        r = run(pae)
        mm = r.ctx.mm
        ptrs = 512 if pae else 1024
        res = r.ctx.cpu.mmu.probe(KMAP_VA)
        pte_table = res.path[-2]  # the page table the walk reached (the pte itself is not present)
        assert r.ctx.pa(mm.kmap_pte) == pte_table + per_page * ((KMAP_VA >> 12) & (ptrs - 1))
        assert r.ctx.pa(mm.pkmap_page_table) & 0xFFF == 0  # PKMAP_BASE is PMD aligned: the first pte


def test_builders_allocate_only_missing_tables() -> None:
    r = run(True)
    ctx = r.ctx
    before = sum(isinstance(e, BootmemAlloc) for e in ctx.trace.events)
    n = len(ctx.trace.events)
    page_table_range_init(ctx, 0xFFE0_0000, 0, ctx.sym("swapper_pg_dir"), "again")
    new = ctx.trace.events[n:]
    assert sum(isinstance(e, BootmemAlloc) for e in ctx.trace.events) == before
    assert {(e.level, e.action) for e in new if isinstance(e, TablePage)} == {("pmd", "kept"), ("pte", "kept")}


def test_a_present_pmd_page_is_kept_and_its_leaves_rewritten() -> None:
    """A backend whose start hook leaves the kernel's pgd entry present — a pmd page holding stale leaves
    and a table for the fixmap, as a hypervisor's pre-built table would — gets that page kept, every lowmem
    leaf rewritten with the kernel's own flags, and no new pte page where one is present."""
    junk = 0x3F00_0000 | 0x0E7  # a stale 2 MiB leaf: user-accessible, not global, wrong frame

    class Prebuilt(NativeInitOps):
        def pagetable_setup_start(self, base: int) -> None:  # type: ignore[override]
            super().pagetable_setup_start(base)  # type: ignore[arg-type]
            ctx = self.ctx
            with ctx.running("prebuilt_pagetable_setup_start"):
                pmd = ctx.mm.bootmem.alloc_low(4096, "test: a pre-built pmd")
                pte = ctx.mm.bootmem.alloc_low(4096, "test: a pre-built fixmap pte page")
                ctx.cpu.write(ctx.va(pmd), junk.to_bytes(8, "little") * 448 + bytes(8 * 63)
                              + (pte | 0x067).to_bytes(8, "little"))
                set_pgd(ctx, base + 24, pmd | 1)
                self.pages = (pmd, pte)

    def make(ctx):  # type: ignore[no-untyped-def]
        ops = native_pv_ops(ctx)
        ops.init = Prebuilt(ctx)
        return ops

    r = run(True, pv=make)
    pmd, pte = r.ctx.pv.init.pages  # type: ignore[attr-defined]
    events = [e for e in r.ctx.trace.events if isinstance(e, TablePage)]
    assert ("pmd", "kept", pmd) in {(e.level, e.action, e.pa) for e in events}
    assert ("pte", "kept", pte) in {(e.level, e.action, e.pa) for e in events}  # the fixmap's, not replaced
    assert not [e for e in events if e.action == "allocated" and e.level == "pmd"]
    pmds = u64s(r, pmd, 512)
    assert pmds[0] & ~NX == P_RW_A_D | PSE | G and pmds[447] == 447 << 21 | P_RW_A_D | PSE | G | NX
    runs = [e for e in r.ctx.trace.events if isinstance(e, LeafRun) and e.fn == "kernel_physical_mapping_init"]
    assert [(e.table, e.count, e.present) for e in runs] == [(pmd, 448, 448)]
    assert pmds[511] == pte | 0x067


def test_paging_init_switches_to_the_new_tables() -> None:
    for pae in (False, True):
        r = run(pae)
        regs = r.ctx.cpu.regs
        assert regs.cr3 == phys(r, "swapper_pg_dir")
        assert regs.cr4 & (Cr4.PSE | Cr4.PGE) == Cr4.PSE | Cr4.PGE and bool(regs.cr4 & Cr4.PAE) == pae
        assert r.ctx.cpu.mmu.mode is (PagingMode.PAE if pae else PagingMode.LEGACY32)
        if pae:
            assert regs.pdptes == u64s(r, phys(r, "swapper_pg_dir"), 4)
        assert all(c.ok for c in r.checks), [c for c in r.checks if not c.ok]


def test_lowmem_ends_at_maxmem_and_a_non_pae_kernel_uses_4g() -> None:
    r = run(False, mem=8 << 30)
    assert r.ctx.mm.max_low_pfn == LOWMEM >> 12 and r.ctx.mm.max_pfn == 1 << 20
    assert "Warning only 4GB will be used." in r.console
    r = run(True, mem=8 << 30)
    assert r.ctx.mm.max_pfn == (8 << 30) + (1 << 30) >> 12  # the PC layout moves 1 GiB above 4 GiB
    r = run(False, mem=256 << 20)
    assert r.ctx.mm.max_low_pfn == r.ctx.mm.max_pfn == (256 << 20) >> 12
    assert u32s(r, phys(r, "swapper_pg_dir") + 4 * 768, 65)[63:] == (63 << 22 | 0x1E3, 0)
