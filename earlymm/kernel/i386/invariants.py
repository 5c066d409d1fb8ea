"""Checks of the i386 boot's page tables, made by an observer (MMU probes and physical reads, which change
nothing) after head.S and at the end: what 2.6.21's code promises (its comments and the spec §5.6), not
what the model happened to do."""

from __future__ import annotations

from earlymm.hw.walk import OK, WalkResult
from earlymm.kernel.i386.consts import (
    _PAGE_PRESENT,
    PAGE_OFFSET,
    PAGE_SIZE,
    USER_PTRS_PER_PGD_PAE,
)
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.i386.events import BootmemAlloc
from earlymm.kernel.invariants import Check


def head_s_mapped_end(ctx: I386Context) -> int:
    """How far head.S's two maps reach: 4 MiB per page table between pg0 and init_pg_tables_end."""
    lay = ctx.layout
    tables_end = ctx.platform.mem.read_u32(lay.phys("init_pg_tables_end"))
    return (tables_end - lay.phys("pg0")) // PAGE_SIZE * (4 << 20)


def _probe(ctx: I386Context, va: int) -> WalkResult:
    return ctx.cpu.mmu.probe(va)


def after_startup_32(ctx: I386Context) -> list[Check]:
    """head.S's promise: identity and PAGE_OFFSET maps of everything up to its tables plus
    INIT_MAP_BEYOND_END, through the PDEs it wrote (0x007: present, writable, user)."""
    lay, end = ctx.layout, head_s_mapped_end(ctx)
    tables_end = ctx.platform.mem.read_u32(lay.phys("init_pg_tables_end"))
    bad = []
    for pa in range(0, end, PAGE_SIZE * 256):
        for va in (pa, PAGE_OFFSET + pa):
            res = _probe(ctx, va)
            if res.outcome != OK or res.pa != pa or not (res.writable and res.user_page):
                bad.append(f"{va:#x}")
    return [Check("startup_32: pg0 maps [0, end) at 0 and at PAGE_OFFSET, PRESENT+RW+USER", not bad,
                  f"wrong at {', '.join(bad[:4])}"),
            Check("startup_32: the map covers the boot page tables plus INIT_MAP_BEYOND_END",
                  end >= tables_end + (128 << 10), f"maps {end:#x}, tables end at {tables_end:#x}")]


def _lowmem(ctx: I386Context) -> Check:
    """Every PMD_SIZE block of lowmem: first and last page map pa = va - PAGE_OFFSET, writable, supervisor;
    executable exactly where the block holds kernel text (PAE with NX)."""
    mm, g = ctx.mm, ctx.pgt
    low_end = mm.max_low_pfn * PAGE_SIZE
    init_end = ctx.sym("__init_end")
    bad = []
    for block in range(0, low_end, g.pmd_size):
        for pa in (block, min(block + g.pmd_size, low_end) - PAGE_SIZE):
            va = PAGE_OFFSET + pa
            res = _probe(ctx, va)
            if res.outcome != OK or res.pa != pa or not res.writable or res.user_page:
                bad.append(f"{va:#x}")
                continue
            if ctx.pae and mm.nx_enabled:
                # is_kernel_text(): PAGE_OFFSET <= addr <= __init_end; a large page if its first byte is
                text = (PAGE_OFFSET + block if res.page_size > PAGE_SIZE else va) <= init_end
                if res.xd == text:
                    bad.append(f"{va:#x} (NX {res.xd})")
    return Check("paging_init: lowmem [0, max_low_pfn) at PAGE_OFFSET, RW supervisor, NX outside kernel text",
                 not bad, f"wrong at {', '.join(bad[:4])}")


def _has_pte_page(ctx: I386Context, va: int) -> bool:
    """The walk of ``va`` reaches a page table (it stops at the PTE, present or not)."""
    res = _probe(ctx, va)
    levels = len(ctx.cpu.mmu.plan.levels)
    return res.outcome == OK or len(res.path) // 2 == levels


def at_end(ctx: I386Context) -> list[Check]:
    """The final tables, as 2.6.21 promises them after paging_init."""
    mm, prof, g = ctx.mm, ctx.profile, ctx.pgt
    checks = [_lowmem(ctx)]
    fix = [prof.fix_to_virt(i) for i in (0, prof.fix_kmap_begin, prof.end_of_fixed_addresses - 1)]
    pk = prof.pkmap_base(ctx.pae, g.pmd_size)
    pkmap = [pk, pk + PAGE_SIZE * (prof.last_pkmap(ctx.pae) - 1)]
    missing = [f"{va:#x}" for va in fix + pkmap if not _has_pte_page(ctx, va)]
    checks.append(Check("pagetable_init: pte pages under the whole fixmap and persistent-kmap areas", not missing,
                        f"no pte page for {', '.join(missing)}"))
    kmap_va = prof.fix_to_virt(prof.fix_kmap_begin)
    res = _probe(ctx, kmap_va)
    want = res.entry_addr(ctx.cpu.mmu.plan, len(res.path) // 2 - 1) if res.path else -1
    checks.append(Check("kmap_init: kmap_pte is FIX_KMAP_BEGIN's pte", ctx.pa(mm.kmap_pte) == want,
                        f"kmap_pte {mm.kmap_pte:#x}, the CPU's pte at {want:#x}"))
    window = head_s_mapped_end(ctx)
    outside = [e.pa for e in ctx.trace.events if isinstance(e, BootmemAlloc) and e.pa + PAGE_SIZE > window]
    if ctx.trace.enabled:
        checks.append(Check("setup_arch: every bootmem page before paging_init lies in head.S's map (\"care must be "
                            "taken not to exceed the 8Mb limit\")", not outside,
                            f"pages at {', '.join(hex(p) for p in outside[:4])} beyond {window:#x}"))
    ident = [va for va in (0x10_0000, ctx.pa_symbol("_text"), ctx.pa_symbol("swapper_pg_dir"))
             if (r := _probe(ctx, va)).outcome != OK or r.pa != va]
    checks.append(Check("the low identity alias the AP start-up needs (PAE: pgd[0] = pgd[3]; non-PAE: head.S's)",
                        not ident, f"{', '.join(hex(v) for v in ident)} not identity-mapped"))
    if ctx.pae:
        base = ctx.pa_symbol("swapper_pg_dir")
        pgd = [ctx.platform.mem.read_u64(base + 8 * i) for i in range(4)]
        zero = ctx.pa_symbol("empty_zero_page") | _PAGE_PRESENT
        ok = pgd[0] == pgd[3] and all(e == zero for e in pgd[1:USER_PTRS_PER_PGD_PAE]) \
            and tuple(ctx.cpu.regs.pdptes) == tuple(pgd)
        checks.append(Check("PAE: PDPT = [kernel pmd, empty_zero_page|P, empty_zero_page|P, kernel pmd], loaded in "
                            "the PDPTE registers", ok, f"swapper_pg_dir {[hex(e) for e in pgd]}, PDPTEs "
                            f"{[hex(e) for e in ctx.cpu.regs.pdptes]}"))
    return checks
