"""``xen_setup_kernel_pagetable`` (arch/x86/xen/mmu.c, as spec §5.3 gives it for v3.9): graft the domain
builder's tables into head_64.S's, convert them pfn → mfn, make them read-only, pin the kernel's L4,
unpin Xen's, and load the new base pointer.

Differences: the model follows spec §5.3's step list for v3.9; the p2m tree is not rebuilt
(``xen_build_dynamic_phys_to_machine`` is reduced to remembering the builder's list), and
``xen_map_identity_early`` does not raise ``max_pfn_mapped`` past step 1's value (``cleanup_highmap`` relies on
it to keep the p2m list and ``start_info`` mapped, as its comment says).
"""

from __future__ import annotations

from earlymm.kernel.consts import (
    __PAGE_KERNEL,
    __PAGE_KERNEL_EXEC,
    _PAGE_TABLE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SIZE,
    START_KERNEL_MAP,
)
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import Note
from earlymm.kernel.xen.hypercall import guest, xen_mc_batch, xen_mc_issue
from earlymm.kernel.xen.mmu import __PAGE_KERNEL_RO, __xen_write_cr3, pin_pagetable_pfn, set_page_prot
from earlymm.kernel.xen.p2m import PTE_PFN_MASK, mfn_to_pfn
from earlymm.platform.xen.consts import SI_MFN_LIST, SI_NR_PT_FRAMES, SI_PT_BASE, MmuExt

LEVEL1_IDENT_ENTRIES = 512 * 4  # PTRS_PER_PTE * 4: the BRK PTE pages that extend the __va window


def m2v(ctx: KernelContext, maddr: int) -> int:
    """``m2v``: a machine address (an entry) to the kernel-map address of its page (``__ka(m2p(..))``)."""
    return (mfn_to_pfn(ctx, (maddr & PTE_PFN_MASK) >> PAGE_SHIFT) << PAGE_SHIFT) + START_KERNEL_MAP


def convert_pfn_mfn(ctx: KernelContext, table: int) -> None:
    """Every entry through ``xen_make_pte``: head_64.S assembled pfns; Xen needs mfns."""
    mmu = ctx.pv.mmu
    for i in range(512):
        ctx.wr(table + 8 * i, mmu.make_entry(ctx.rd(table + 8 * i)))


def extend_brk_early(ctx: KernelContext, size: int, align: int) -> int:
    start = max(ctx.brk_end, ctx.sym("__brk_base"))
    at = (start + align - 1) & ~(align - 1)
    ctx.brk_end = at + size
    return at


def xen_map_identity_early(ctx: KernelContext, pmd: int, max_pfn: int) -> None:
    """Extend the ``__va`` window of ``level2_ident_pgt`` with PTE pages from BRK: present PTE pages are
    reused (the builder's, read-only — a store into one is emulated by Xen), present PTEs kept."""
    mmu = ctx.pv.mmu
    mask = ctx.rd(ctx.sym("__supported_pte_mask"))
    level1 = extend_brk_early(ctx, 8 * LEVEL1_IDENT_ENTRIES, PAGE_SIZE)
    ident_pte = pfn = 0
    pmdidx = 0
    while pmdidx < 512 and pfn < max_pfn:
        e = ctx.rd(pmd + 8 * pmdidx)
        if e & 1:
            pte_page = m2v(ctx, e)
        else:
            if ident_pte == LEVEL1_IDENT_ENTRIES:
                break
            pte_page = level1 + 8 * ident_pte
            ident_pte += 512
            ctx.wr(pmd + 8 * pmdidx, mmu.make_entry(ctx.pa(pte_page) | _PAGE_TABLE))
        for pteidx in range(512):
            if ctx.rd(pte_page + 8 * pteidx) == 0:
                ctx.wr(pte_page + 8 * pteidx, mmu.make_entry((pfn << PAGE_SHIFT) | (__PAGE_KERNEL_EXEC & mask)))
            pfn += 1
        pmdidx += 1
    for i in range(0, ident_pte, 512):
        set_page_prot(ctx, level1 + 8 * i, __PAGE_KERNEL_RO)
    set_page_prot(ctx, pmd, __PAGE_KERNEL_RO)
    ctx.emit(Note(f"xen_map_identity_early: __va window to pfn {pfn:#x}, {ident_pte // 512} BRK PTE page(s)"))


def xen_setup_kernel_pagetable(ctx: KernelContext, pgd: int, max_pfn: int) -> None:
    """Model of v3.9 ``xen_setup_kernel_pagetable(pgd, max_pfn)`` (spec §5.3 steps 1–9); ``pgd`` is the
    builder's L4 (``start_info->pt_base``)."""
    lay = ctx.layout
    si = guest(ctx).start_info
    ctx.wr(lay["max_pfn_mapped"], ctx.pa(ctx.rd(si + SI_MFN_LIST)) >> PAGE_SHIFT)  # 1
    l4 = lay.init_pgt
    ctx.wr(l4, 0)  # 2: init_level4_pgt[0] = __pgd(0): no identity map for user space
    for table in (l4, lay["level3_ident_pgt"], lay["level3_kernel_pgt"]):  # 3
        convert_pfn_mfn(ctx, table)
    g = ctx.pgt
    l3 = m2v(ctx, ctx.rd(pgd + 8 * g.pgd_index(START_KERNEL_MAP)))  # 4
    l2 = m2v(ctx, ctx.rd(l3 + 8 * g.pud_index(START_KERNEL_MAP)))
    ctx.memcpy(lay["level2_ident_pgt"], l2, PAGE_SIZE)
    ctx.memcpy(lay["level2_kernel_pgt"], l2, PAGE_SIZE)
    l3 = m2v(ctx, ctx.rd(pgd + 8 * g.pgd_index(START_KERNEL_MAP + PMD_SIZE)))
    l2 = m2v(ctx, ctx.rd(l3 + 8 * g.pud_index(START_KERNEL_MAP + PMD_SIZE)))
    ctx.memcpy(lay["level2_fixmap_pgt"], l2, PAGE_SIZE)  # the same L2: the oddity of v3.9
    ctx.emit(Note("xen_setup_kernel_pagetable: init_level4_pgt, level3_ident/kernel_pgt converted to mfns; "
                  f"the builder's L2 at {l2:#x} copied into level2_ident/kernel/fixmap_pgt"))
    xen_map_identity_early(ctx, lay["level2_ident_pgt"], max_pfn)  # 5
    for name in ("init_top_pgt", "level3_ident_pgt", "level3_kernel_pgt", "level3_user_vsyscall",
                 "level2_kernel_pgt", "level2_fixmap_pgt"):  # 6
        bad = name == "level2_kernel_pgt" and guest(ctx).bug == "writable-pagetable"
        set_page_prot(ctx, lay[name], __PAGE_KERNEL if bad else __PAGE_KERNEL_RO)
    pin_pagetable_pfn(ctx, MmuExt.PIN_L4_TABLE, ctx.pa(l4) >> PAGE_SHIFT)  # 7
    pin_pagetable_pfn(ctx, MmuExt.UNPIN_TABLE, ctx.pa(pgd) >> PAGE_SHIFT)
    xen_mc_batch(ctx)  # 8: "there can be no user pgd, and no page structure to attach it to"
    __xen_write_cr3(ctx, True, ctx.pa(l4))
    xen_mc_issue(ctx)
    ctx.early_reservations.append((ctx.pa(ctx.rd(si + SI_PT_BASE)), ctx.rd(si + SI_NR_PT_FRAMES) * PAGE_SIZE))  # 9
    ctx.emit(Note(f"xen_setup_kernel_pagetable: {ctx.profile.init_pgt} pinned and loaded; the builder's L4 "
                  "unpinned"))
