"""pfn ↔ mfn as the guest computes them (arch/x86/include/asm/xen/page.h, arch/x86/xen/p2m.c, mmu.c
``pte_pfn_to_mfn``/``pte_mfn_to_pfn`` @ v3.9; spec §5.1).

The p2m is the guest's own array (the builder's ``mfn_list``; v3.9 indexes it through a three-level tree
whose leaves are that list's pages — the model reads the leaf entry directly); the m2p is Xen's table, read
through its read-only mapping at ``MACH2PHYS_VIRT_START``. Every read goes through the MMU.
"""

from __future__ import annotations

import numpy as np

from earlymm.kernel.consts import _PAGE_PRESENT, PAGE_SHIFT
from earlymm.kernel.context import KernelContext
from earlymm.kernel.xen.hypercall import guest
from earlymm.platform.xen.consts import MACH2PHYS_VIRT_START

INVALID_P2M_ENTRY = (1 << 64) - 1
PTE_PFN_MASK = ((1 << 46) - 1) & ~0xFFF  # v3.9 __PHYSICAL_MASK_SHIFT 46
PTE_FLAGS_MASK = ((1 << 64) - 1) & ~PTE_PFN_MASK


def pfn_to_mfn(ctx: KernelContext, pfn: int) -> int:
    """``get_phys_to_machine``: the p2m entry, or INVALID_P2M_ENTRY past the domain's pages."""
    g = guest(ctx)
    if pfn >= g.nr_pages:
        return INVALID_P2M_ENTRY
    return ctx.rd(g.mfn_list + 8 * pfn)


def pfns_to_mfns(ctx: KernelContext, pfns: np.ndarray) -> np.ndarray:
    """``pfn_to_mfn`` of many pfns: one read of the p2m range they span."""
    g = guest(ctx)
    out = np.full(len(pfns), INVALID_P2M_ENTRY, dtype=np.uint64)
    ok = pfns < g.nr_pages
    if ok.any():
        lo, hi = int(pfns[ok].min()), int(pfns[ok].max()) + 1
        table = np.frombuffer(ctx.cpu.read(g.mfn_list + 8 * lo, 8 * (hi - lo)), dtype="<u8")
        out[ok] = table[(pfns[ok] - lo).astype(np.int64)]
    return out


def mfn_to_pfn(ctx: KernelContext, mfn: int) -> int:
    """``mfn_to_pfn``: the m2p entry (beyond the m2p: ~0); a pfn whose p2m does not lead back is foreign
    (``m2p_find_override_pfn`` finds nothing in the model: ~0)."""
    g = guest(ctx)
    if mfn >= g.machine_to_phys_nr:
        return INVALID_P2M_ENTRY
    pfn = ctx.rd(MACH2PHYS_VIRT_START + 8 * mfn)  # __get_user(pfn, &machine_to_phys_mapping[mfn])
    if pfn != INVALID_P2M_ENTRY and pfn_to_mfn(ctx, pfn) != mfn:
        return INVALID_P2M_ENTRY
    return pfn


def pte_pfn_to_mfn(ctx: KernelContext, val: int) -> int:
    """``xen_make_pte`` & co.: a present entry's pfn becomes its mfn; a pfn without one, an empty entry."""
    if not val & _PAGE_PRESENT:
        return val
    mfn = pfn_to_mfn(ctx, (val & PTE_PFN_MASK) >> PAGE_SHIFT)
    if mfn == INVALID_P2M_ENTRY:
        return 0
    return (mfn << PAGE_SHIFT) | (val & PTE_FLAGS_MASK)


def ptes_pfn_to_mfn(ctx: KernelContext, vals: np.ndarray) -> np.ndarray:
    present = (vals & np.uint64(_PAGE_PRESENT)) != 0
    out: np.ndarray = vals.copy()
    if present.any():
        pfns = (vals[present] & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT)
        mfns = pfns_to_mfns(ctx, pfns)
        bad = mfns == np.uint64(INVALID_P2M_ENTRY)
        conv = (mfns << np.uint64(PAGE_SHIFT)) | (vals[present] & np.uint64(PTE_FLAGS_MASK))
        conv[bad] = 0
        out[present] = conv
    return out


def pte_mfn_to_pfn(ctx: KernelContext, val: int) -> int:
    """``xen_pte_val`` & co.: a present entry's mfn becomes its pfn; an unknown mfn leaves only the flags,
    without P."""
    if not val & _PAGE_PRESENT:
        return val
    pfn = mfn_to_pfn(ctx, (val & PTE_PFN_MASK) >> PAGE_SHIFT)
    if pfn == INVALID_P2M_ENTRY:
        return val & PTE_FLAGS_MASK & ~_PAGE_PRESENT
    return (pfn << PAGE_SHIFT) | (val & PTE_FLAGS_MASK)
