"""Checks of the Xen PV path at its phases (spec §5.1–§5.3), read from machine memory — the tables as Xen
and the CPU see them, not as the kernel believes them.

The property Xen enforces is checked independently of Xen's bookkeeping: walking the tables from CR3,
no frame that serves as a page table appears as a writable leaf anywhere. Entries must name frames of
the domain (mfns the m2p maps back to a pfn whose p2m entry is that mfn).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from earlymm.kernel.consts import PAGE_SHIFT, START_KERNEL_MAP
from earlymm.kernel.context import KernelContext
from earlymm.kernel.invariants import Check
from earlymm.kernel.xen.hypercall import guest, hv
from earlymm.platform.xen.consts import XEN_FIRST_SLOT, XEN_LAST_SLOT

_SHIFTS = (39, 30, 21, 12)


@dataclass
class TableWalk:
    tables: set[int] = field(default_factory=set)  # mfns of every table reached
    leaf_va: list[np.ndarray] = field(default_factory=list)
    leaf_mfn: list[np.ndarray] = field(default_factory=list)
    leaf_rw: list[np.ndarray] = field(default_factory=list)

    def leaves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cat = np.concatenate
        if not self.leaf_va:
            empty = np.zeros(0, dtype=np.uint64)
            return empty, empty, np.zeros(0, dtype=bool)
        return cat(self.leaf_va), cat(self.leaf_mfn), cat(self.leaf_rw)


def walk_machine(ctx: KernelContext, root_mfn: int) -> TableWalk:
    """Every table and 4 KiB leaf under ``root_mfn`` (Xen's slots skipped; a PV guest has no large leaves)."""
    mem, mask = ctx.platform.mem, hv(ctx).types.addr_mask
    out = TableWalk()

    def visit(mfn: int, level: int, va: int) -> None:
        if mfn in out.tables:
            return
        out.tables.add(mfn)
        ents = np.frombuffer(mem.read(mfn << 12, 4096), dtype="<u8")
        idx = np.flatnonzero(ents & np.uint64(1))
        if level == 4:
            idx = idx[(idx < XEN_FIRST_SLOT) | (idx > XEN_LAST_SLOT)]
        shift = _SHIFTS[4 - level]
        if level == 1:
            vas = np.uint64(va) + idx.astype(np.uint64) * np.uint64(1 << shift)
            out.leaf_va.append(vas)
            out.leaf_mfn.append((ents[idx] & np.uint64(mask)) >> np.uint64(PAGE_SHIFT))
            out.leaf_rw.append((ents[idx] & np.uint64(2)) != 0)
            return
        for i in idx.tolist():
            child_va = va + (i << shift)
            if level == 4 and i >= 256:
                child_va |= 0xFFFF_0000_0000_0000
            visit((int(ents[i]) & mask) >> PAGE_SHIFT, level - 1, child_va)

    visit(root_mfn, 4, 0)
    return out


def _readonly(w: TableWalk) -> Check:
    _va, mfn, rw = w.leaves()
    bad = [int(m) for m in np.unique(mfn[rw]).tolist() if int(m) in w.tables]
    return Check("every page-table frame is mapped read-only wherever it is mapped (Xen's rule)", not bad,
                 f"{len(bad)} table frame(s) mapped writable, e.g. mfn {bad[0]:#x}" if bad else "")


def _owned(ctx: KernelContext, w: TableWalk) -> Check:
    _va, mfn, _rw = w.leaves()
    frames = hv(ctx).frames
    owner = frames.owner[np.concatenate([mfn, np.array(sorted(w.tables), dtype=np.uint64)]).astype(np.int64)]
    foreign = int(np.count_nonzero(owner != hv(ctx).domid))
    return Check("every table and leaf names a machine frame of the domain (entries hold mfns)", not foreign,
                 f"{foreign} entries name frames the domain does not own" if foreign else "")


def at_entry(ctx: KernelContext) -> list[Check]:
    w = walk_machine(ctx, ctx.cpu.regs.cr3 >> PAGE_SHIFT)
    sod = ctx.platform.sod  # type: ignore[attr-defined]
    va, mfn, _rw = w.leaves()
    p2m = ctx.platform.p2m  # type: ignore[attr-defined]
    sel = va >= np.uint64(START_KERNEL_MAP)
    pfns = (va[sel] - np.uint64(START_KERNEL_MAP)) >> np.uint64(PAGE_SHIFT)
    ok = bool(len(pfns)) and bool(np.all(p2m[pfns.astype(np.int64)] == mfn[sel]))
    span = (sod.v_end - sod.virt_base) >> PAGE_SHIFT
    return [_readonly(w), _owned(ctx, w),
            Check("domain builder: [virt_base, v_end) maps pfns 0… one to one through the p2m",
                  ok and len(pfns) == span, f"{len(pfns)} pages mapped, {span} expected")]


def after_setup_kernel_pagetable(ctx: KernelContext) -> list[Check]:
    x = hv(ctx)
    l4 = x.frames.get_gpfn_from_mfn(x.kernel_root)
    want = ctx.pa(ctx.layout.init_pgt) >> PAGE_SHIFT
    return [Check(f"xen_setup_kernel_pagetable: the base pointer is {ctx.profile.init_pgt} (pfn {want:#x}), pinned",
                  l4 == want and x.types.info(x.kernel_root).pinned, f"base pointer at pfn {l4:#x}")]


def after_init_mem_mapping(ctx: KernelContext) -> list[Check]:
    w = walk_machine(ctx, ctx.cpu.regs.cr3 >> PAGE_SHIFT)
    va, mfn, _rw = w.leaves()
    g = guest(ctx)
    p2m = ctx.platform.p2m  # type: ignore[attr-defined]
    lo, hi = np.uint64(ctx.page_offset), np.uint64(ctx.page_offset + (g.nr_pages << PAGE_SHIFT))
    sel = (va >= lo) & (va < hi)
    pfns = ((va[sel] - lo) >> np.uint64(PAGE_SHIFT)).astype(np.int64)
    right = int(np.count_nonzero(p2m[pfns] == mfn[sel]))
    return [_readonly(w), _owned(ctx, w),
            Check("init_mem_mapping: __va(pfn) maps the pfn's mfn for every page of the domain, with 4 KiB pages",
                  right == g.nr_pages == len(pfns), f"{right} of {g.nr_pages} pfns mapped to their mfn")]


def at_end(ctx: KernelContext) -> list[Check]:
    mmu = ctx.pv.mmu
    full = bool(getattr(mmu, "full", False))
    page = ctx.profile.vmemmap_base + (ctx.pa(ctx.layout.init_pgt) >> PAGE_SHIFT) * ctx.profile.struct_page_size
    res = ctx.cpu.mmu.probe(page)
    return [Check("xen_post_allocator_init: the full ops are installed", full, ""),
            Check(f"the struct page of {ctx.profile.init_pgt} exists (vmemmap {page:#x} is mapped)", res.ok, "")]
