"""The tables a boot path starts with, by Linux's names: head_64.S's static tables (placed where the
loader put the image), Xen's bootstrap L4–L1 (the domain builder's ``page tables`` segment), i386's
``swapper_pg_dir``, and the tables in use at entry; their static links, read from the image itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from earlymm.arch.modes import PagingMode
from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.kernel.i386.context import I386Context
from earlymm.tools.tablewrites.tables import Table

if TYPE_CHECKING:
    from earlymm.tools.tablewrites.capture import WriteTracer

POOL = "early_dynamic_pgts"
# (model symbol, level; 0 = the root, whose level is the paging mode's)
_NATIVE = (("early_top_pgt", 0), ("init_top_pgt", 0), ("level4_kernel_pgt", 4), ("level3_kernel_pgt", 3),
           ("level2_kernel_pgt", 2), ("level2_fixmap_pgt", 2), ("level1_fixmap_pgt", 1), ("bm_pte", 1))
_XEN = (("init_top_pgt", 4), ("level3_ident_pgt", 3), ("level2_ident_pgt", 2), ("level3_kernel_pgt", 3),
        ("level2_kernel_pgt", 2), ("level2_fixmap_pgt", 2), ("level1_fixmap_pgt", 1),
        ("level3_user_vsyscall", 3))


def real_name(ctx: Any, name: str) -> str:
    prof = ctx.profile
    return str({"early_top_pgt": prof.top_pgt, "init_top_pgt": prof.init_pgt}.get(name, name))


def register_known(tr: WriteTracer, ctx: Any) -> None:
    if isinstance(ctx, I386Context):
        tr.arch = "i386-pae" if ctx.pae else "i386"
        # 2.6.21's head.S builds a 2-level directory even in a PAE kernel (PAE comes on in paging_init)
        tr.new_table("swapper_pg_dir", ctx.layout.phys("swapper_pg_dir"), 2,
                     "symbol (head.S's 2-level directory)" if ctx.pae else "symbol", root=True, entry_size=4)
        return
    lay, prof = ctx.layout, ctx.profile
    xen = tr.xen_hv is not None
    tr.arch = "xen-pv" if xen else "x86-64"
    static: list[tuple[Table, str]] = []
    if xen:
        p2m = ctx.platform.p2m
        for name, level in _XEN:
            if name in lay.symbols:
                pfn = (lay[name] - START_KERNEL_MAP) >> 12
                static.append((tr.new_table(real_name(ctx, name), int(p2m[pfn]) << 12, level, "symbol",
                                            root=level == 4), name))
        sod = ctx.platform.sod
        for level, pfns in sorted(sod.tables.items(), reverse=True):
            for k, pfn in enumerate(pfns):
                label = f"Xen bootstrap L{level}" + (f"[{k}]" if len(pfns) > 1 else "")
                tr.new_table(label, int(p2m[pfn]) << 12, level, "domain builder (start of day)", root=level == 4)
        _static_links(ctx, static)
        return
    delta = tr.load_delta()
    extra = tuple(("level1_fixmap_pgt_2", 1) for _ in prof.fixmap_pmds[1:2])
    for name, level in _NATIVE + extra:
        if (name == "level4_kernel_pgt" and not prof.la57) or name not in lay.symbols:
            continue
        pa = lay[name] - START_KERNEL_MAP + delta
        static.append((tr.new_table(real_name(ctx, name), pa, level or tr.top_level(), "symbol", root=level == 0),
                       name))
    _static_links(ctx, static)
    mmu = ctx.cpu.mmu
    if mmu.mode in (PagingMode.LONG4, PagingMode.LONG5):
        tr.scan_loader(mmu.root, 5 if mmu.mode is PagingMode.LONG5 else 4)


def _static_links(ctx: Any, static: list[tuple[Table, str]]) -> None:
    """The image's pre-assembled pointers between its own tables (compile-time addresses, as head_64.S
    has them, before any fix-up): which static table sits below which."""
    by_link = {ctx.layout.link_phys(sym): t for t, sym in static}
    for parent, _sym in static:
        if parent.level is None or parent.level < 2:
            continue
        ents = ctx.platform.mem.entries8(parent.pa >> 12)
        if ents is None:
            continue
        vals = np.frombuffer(ents, dtype=np.uint64)
        for i in np.flatnonzero((vals & np.uint64(0x81)) == np.uint64(1)).tolist():
            child = by_link.get(int(vals[i]) & 0x000F_FFFF_FFFF_F000)
            if child is not None and child is not parent and child.level == parent.level - 1:
                child.link(parent, i)


def name_of(tr: WriteTracer, pa: int) -> str:
    """A page's name when a link first shows it is a table."""
    ctx = tr.ctx
    if tr.arch.startswith("i386"):
        pg0 = ctx.layout.phys("pg0")
        return f"pg0[{(pa - pg0) >> 12}]" if pg0 <= pa < pg0 + (256 << 12) else f"page {pa:#x}"
    if tr.xen_hv is not None:
        return f"mfn {pa >> 12:#x}"
    lay = ctx.layout
    pool = lay[POOL] - START_KERNEL_MAP + tr.load_delta()
    if pool <= pa < pool + (lay.pool_pages << 12):
        return f"{POOL}[{(pa - pool) >> 12}]"
    brk = lay["__brk_base"] - START_KERNEL_MAP + tr.load_delta()
    if brk <= pa < lay["__brk_limit"] - START_KERNEL_MAP + tr.load_delta():
        return f"brk[{(pa - brk) >> 12}]"
    return f"page {pa:#x}"
