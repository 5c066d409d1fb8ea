"""What the i386 Xen path promises after ``paging_init`` (spec §5.1, §5.6): lowmem mapped through the p2m,
no writable mapping of any page-table frame, the hypervisor's PTE pages shared rather than copied,
``shared_info`` at FIX_PARAVIRT_BOOTMAP, CR3 on ``swapper_pg_dir`` and — with PAE only — the pin."""

from __future__ import annotations

from earlymm.hw.walk import OK
from earlymm.kernel.i386.consts import PAGE_OFFSET, PAGE_SHIFT, PAGE_SIZE
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.invariants import Check
from earlymm.platform.xen.domain32 import Xen32PvPlatform


def at_end(ctx: I386Context) -> list[Check]:
    plat = ctx.platform
    assert isinstance(plat, Xen32PvPlatform)
    xen, p2m, mm = plat.xen, plat.p2m, ctx.mm
    tables = {m for m in xen.types.pages if xen.types.level(m)}
    bad, rw_tables = [], []
    for pfn in range(mm.max_low_pfn):
        res = ctx.cpu.mmu.probe(PAGE_OFFSET + pfn * PAGE_SIZE)
        if res.outcome != OK or res.pa >> PAGE_SHIFT != int(p2m[pfn]) or res.user_page:
            bad.append(f"{PAGE_OFFSET + pfn * PAGE_SIZE:#x}")
        elif res.writable and int(p2m[pfn]) in tables:
            rw_tables.append(f"{PAGE_OFFSET + pfn * PAGE_SIZE:#x}")
    checks = [Check("paging_init: lowmem [0, max_low_pfn) at PAGE_OFFSET maps p2m[pfn], supervisor", not bad,
                    f"wrong at {', '.join(bad[:4])}"),
              Check("Xen: no writable mapping of a page-table frame (xen_set_pte_init kept them read-only)",
                    not rw_tables, f"writable: {', '.join(rw_tables[:4])}")]
    swapper = int(p2m[ctx.pa_symbol("swapper_pg_dir") >> PAGE_SHIFT])
    checks.append(Check("CR3 (the base pointer) is swapper_pg_dir's mfn", xen.kernel_root == swapper
                        and ctx.cpu.regs.cr3 >> PAGE_SHIFT == swapper,
                        f"base pointer {xen.kernel_root:#x}, swapper_pg_dir mfn {swapper:#x}"))
    pinned = xen.types.info(swapper).pinned
    checks.append(Check("MMUEXT_PIN_L3_TABLE pinned swapper_pg_dir with PAE; a 2-level Xen ignored it",
                        pinned == ctx.pae, f"pinned {pinned}"))
    va = ctx.profile.fix_to_virt(ctx.profile.fix_paravirt_bootmap)
    res = ctx.cpu.mmu.probe(va)
    checks.append(Check("xen_pagetable_setup_done: shared_info at FIX_PARAVIRT_BOOTMAP", res.outcome == OK
                        and res.pa == xen.shared_info, f"{va:#x} -> {res.pa if res.outcome == OK else None}"))
    builder_l1 = [int(p2m[p]) for p in plat.sod.tables[1]]
    kept = [m for m in builder_l1 if xen.types.level(m) == 1]
    checks.append(Check("the hypervisor's PTE pages are the kernel's: still L1 tables, in use",
                        len(kept) == len(builder_l1), f"{len(kept)} of {len(builder_l1)}"))
    return checks
