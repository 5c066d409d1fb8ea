"""Which pages are page tables, by Linux's names: those a boot path starts with — head_64.S's static tables
(placed where the loader put the image), Xen's bootstrap L4–L1 (the domain builder's ``page tables``
segment), i386's ``swapper_pg_dir``, the tables in use at entry, and their static links read from the image
itself — and those the boot announces as it runs (events: pool pages, ``alloc_low_pages``, bootmem pages,
CR3 loads)."""

from __future__ import annotations

from typing import Any

import numpy as np

from earlymm.arch.modes import PagingMode
from earlymm.hw.events import CrWrite, Event
from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.kernel.events import LowPageAlloc, PhaseEntered, PoolAlloc
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.i386.events import TablePage
from earlymm.tools.tablewrites.tables import Table, TracerPort

POOL = "early_dynamic_pgts"
_ADDR = 0x000F_FFFF_FFFF_F000
_CR4_LA57 = 1 << 12
# (model symbol, level; 0 = the root, whose level is the paging mode's)
_NATIVE = (("early_top_pgt", 0), ("init_top_pgt", 0), ("level4_kernel_pgt", 4), ("level3_kernel_pgt", 3),
           ("level2_kernel_pgt", 2), ("level2_fixmap_pgt", 2), ("level1_fixmap_pgt", 1), ("bm_pte", 1))
_XEN = (("init_top_pgt", 4), ("level3_ident_pgt", 3), ("level2_ident_pgt", 2), ("level3_kernel_pgt", 3),
        ("level2_kernel_pgt", 2), ("level2_fixmap_pgt", 2), ("level1_fixmap_pgt", 1),
        ("level3_user_vsyscall", 3))


def real_name(ctx: Any, name: str) -> str:
    prof = ctx.profile
    return str({"early_top_pgt": prof.top_pgt, "init_top_pgt": prof.init_pgt}.get(name, name))


def register_known(tr: TracerPort, ctx: Any) -> None:
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
        scan_loader(tr, mmu.root, 5 if mmu.mode is PagingMode.LONG5 else 4)


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


def name_of(tr: TracerPort, pa: int) -> str:
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


def on_event(tr: TracerPort, e: Event) -> None:
    """The tables a boot announces as it runs: pool pages, alloc_low_pages and bootmem pages, CR3 roots."""
    if isinstance(e, PoolAlloc):
        level = {"pte": 1, "pmd": 2, "pud": 3, "p4d": 4}.get(e.level, tr.top_level())
        tr.new_table(f"{POOL}[{e.index}]", e.phys, level,
                       f"allocation ({POOL} handed out as a {e.level})")
    elif isinstance(e, LowPageAlloc):
        pa = tr.machine(e.pa)
        tr.new_table(_low_name(tr, e.pa, e.source), pa, None, "allocation (alloc_low_pages)")
    elif isinstance(e, PhaseEntered) and e.phase == "pagetable_setup_start" and tr.arch == "i386-pae":
        # head.S built a 2-level directory; from here the kernel writes swapper_pg_dir as a PAE pgd
        swapper = tr.ctx.layout.phys("swapper_pg_dir")
        tr.new_table("swapper_pg_dir", swapper, 3, "symbol (a PAE pgd from pagetable_setup_start on)",
                       root=True)
    elif isinstance(e, CrWrite) and e.reg == "cr3":
        _cr3(tr, e.new)
    elif isinstance(e, CrWrite) and e.reg == "cr4":
        _cr4(tr, e.old, e.new)
    elif isinstance(e, TablePage) and e.action == "allocated":
        tr.new_table(f"bootmem {e.level} page", e.pa, {"pte": 1, "pmd": 2}.get(e.level),
                       f"allocation ({e.fn}: alloc_bootmem_low_pages)")

def _low_name(tr: TracerPort, pa: int, source: str) -> str:
    ctx = tr.ctx
    if source == "brk":
        brk = ctx.sym("__brk_base") - START_KERNEL_MAP + tr.load_delta()
        return f"brk[{(pa - brk) >> 12}]"
    return "memblock page"

def _cr3(tr: TracerPort, cr3: int) -> None:
    pa = cr3 & 0x000F_FFFF_FFFF_F000 if tr.arch != "i386-pae" else cr3 & 0xFFFF_FFE0
    pfn = pa >> 12
    if tr.loader_pfns and pfn not in tr.loader_pfns:
        for p in tr.loader_pfns:  # the loader's tables are dead: their pages may become anything
            t = tr.registry.get(p)
            if t is not None and t.how.startswith("in use"):
                tr.registry.forget(p)
        tr.loader_pfns = []
    old = tr.registry.get(tr.root >> 12) if tr.root else None
    if old is not None and old.how == "CR3" and old.pa >> 12 != pfn:
        tr.registry.forget(old.pa >> 12)  # a root only CR3 told us about: once left, just memory again
    tr.root = pa
    t = tr.registry.get(pfn)
    if t is None:
        tr.new_table(f"CR3 root {pa:#x}", pa, _cr3_level(tr), "CR3", root=True)
    elif not t.root:
        t.root, t.level = True, t.level or _cr3_level(tr)

def _cr3_level(tr: TracerPort) -> int:
    """The root's level under the paging mode CR4 selects now (the decompressor loads a 5-level root
    before it sets CR4.LA57: ``_cr4`` corrects it then)."""
    if tr.arch.startswith("i386"):
        return tr.top_level()
    return 5 if tr.ctx.cpu.regs.cr4 & _CR4_LA57 else 4

def _cr4(tr: TracerPort, old: int, new: int) -> None:
    if (old ^ new) & _CR4_LA57 and not tr.arch.startswith("i386"):
        t = tr.registry.get((tr.ctx.cpu.regs.cr3 & _ADDR) >> 12)
        if t is not None and t.root and t.how in ("CR3", "in use at entry (CR3)"):
            t.level = _cr3_level(tr)

def scan_loader(tr: TracerPort, root: int, levels: int, limit: int = 4096) -> None:
    """Register the tables in use when tracing starts (the boot loader's, reached from CR3)."""
    mem = tr.ctx.platform.mem
    todo, seen = [(root, levels)], 0
    while todo and seen < limit:
        pa, level = todo.pop()
        if tr.registry.get(pa >> 12) is not None:
            continue
        tr.new_table(f"loader L{level}", pa, level, "in use at entry (CR3)", root=level == levels)
        tr.loader_pfns.append(pa >> 12)
        seen += 1
        ents = mem.entries8(pa >> 12)
        if level > 1 and ents is not None:
            vals = np.frombuffer(ents, dtype=np.uint64)
            for v in vals[(vals & np.uint64(0x81)) == np.uint64(1)].tolist():
                todo.append((int(v) & 0x000F_FFFF_FFFF_F000, level - 1))

# -- recording ------------------------------------------------------------------------------------
