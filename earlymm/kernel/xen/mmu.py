"""The Xen PV MMU operations (arch/x86/xen/mmu.c @ v3.9; spec §5.3–§5.5), as functions in Linux's names.

Two generations of ops: the early ones ``xen_init_mmu_ops`` installs (``xen_set_pte_init`` with
``mask_rw_pte``, the ``*_hyper`` stores, ``xen_alloc_pte_init`` that makes a page read-only and pins it,
``xen_write_cr3_init`` since seed 004's fix) and the full ones ``xen_post_allocator_init`` switches to, which
consult ``struct page`` (``PagePinned``, ``page->private``) — so they work only once the vmemmap exists.
Entry stores go through hypercalls or, for pages Xen does not yet treat as page tables, plain stores.
"""

from __future__ import annotations

import numpy as np

from earlymm.kernel.consts import _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, PAGE_SHIFT, PAGE_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.xen.hypercall import (
    BUG,
    HYPERVISOR_mmu_update,
    HYPERVISOR_mmuext_op,
    HYPERVISOR_update_va_mapping,
    hv,
    xen_mc_batch,
    xen_mc_entry,
    xen_mc_issue,
)
from earlymm.kernel.xen.p2m import INVALID_P2M_ENTRY, PTE_PFN_MASK, pfn_to_mfn, pfns_to_mfns, pte_mfn_to_pfn
from earlymm.platform.xen.consts import MMU_NORMAL_PT_UPDATE, MmuExt

USER_LIMIT_PGD = 256  # pgd_index(USER_LIMIT): STACK_TOP_MAX rounded up to a PGD boundary
PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G = 1, 2, 3
__PAGE_KERNEL_RO = (1 << 63) | 0x161  # __PAGE_KERNEL & ~_PAGE_RW


# -- addresses -------------------------------------------------------------------------------------------
def virt_to_machine(ctx: KernelContext, va: int) -> int:
    """``virt_to_machine`` / ``arbitrary_virt_to_machine`` for kernel addresses: the machine address of
    ``va``'s pseudo-physical page."""
    mfn = pfn_to_mfn(ctx, ctx.pa(va) >> PAGE_SHIFT)
    if mfn == INVALID_P2M_ENTRY:
        BUG(ctx, "arch/x86/xen/mmu.c", f"virt_to_machine({va:#x}): pfn without an mfn")
    return (mfn << PAGE_SHIFT) | (va & (PAGE_SIZE - 1))


def virt_to_page(ctx: KernelContext, va: int) -> int:
    """``virt_to_page``: the address of the ``struct page`` of ``va``'s frame in the vmemmap (spec §2.5)."""
    prof = ctx.profile
    return prof.vmemmap_base + (ctx.pa(va) >> PAGE_SHIFT) * prof.struct_page_size


def page_pinned(ctx: KernelContext, va: int) -> bool:
    """``PagePinned(virt_to_page(va))``: PG_pinned in ``page->flags`` — a read of the vmemmap."""
    return bool(ctx.rd(virt_to_page(ctx, va)) >> ctx.profile.pg_pinned_bit & 1)


def set_page_pinned(ctx: KernelContext, va: int) -> None:
    page = virt_to_page(ctx, va)
    ctx.wr(page, ctx.rd(page) | 1 << ctx.profile.pg_pinned_bit)


def lookup_address(ctx: KernelContext, va: int) -> tuple[int, int] | None:
    """``lookup_address`` (pageattr.c): the entry mapping ``va`` in ``swapper_pg_dir`` and its level; each
    step reads an entry through the MMU and converts it with ``pXd_val`` (mfn → pfn)."""
    g = ctx.pgt
    pgd = ctx.layout.init_pgt + 8 * g.pgd_index(va)
    e = ctx.rd(pgd)
    if not e:
        return None
    pud = ctx.va(ctx.entry_val(e) & PTE_PFN_MASK) + 8 * g.pud_index(va)
    e = ctx.rd(pud)
    if not e:
        return None
    if e & _PAGE_PSE or not e & _PAGE_PRESENT:
        return pud, PG_LEVEL_1G
    pmd = ctx.va(ctx.entry_val(e) & PTE_PFN_MASK) + 8 * g.pmd_index(va)
    e = ctx.rd(pmd)
    if not e:
        return None
    if e & _PAGE_PSE or not e & _PAGE_PRESENT:
        return pmd, PG_LEVEL_2M
    return ctx.va(ctx.entry_val(e) & PTE_PFN_MASK) + 8 * g.pte_index(va), PG_LEVEL_4K


def make_lowmem_page_readonly(ctx: KernelContext, va: int) -> None:
    found = lookup_address(ctx, va)
    if found is None:
        return  # vaddr missing
    if HYPERVISOR_update_va_mapping(ctx, va, ctx.rd(found[0]) & ~_PAGE_RW, 0):
        BUG(ctx, "arch/x86/xen/mmu.c", f"make_lowmem_page_readonly({va:#x})")


def make_lowmem_page_readwrite(ctx: KernelContext, va: int) -> None:
    found = lookup_address(ctx, va)
    if found is None:
        return
    if HYPERVISOR_update_va_mapping(ctx, va, ctx.rd(found[0]) | _PAGE_RW, 0):
        BUG(ctx, "arch/x86/xen/mmu.c", f"make_lowmem_page_readwrite({va:#x})")


def set_page_prot(ctx: KernelContext, va: int, prot: int) -> None:
    """``set_page_prot``: remap one page of the kernel with ``prot`` (``pfn_pte`` through ``make_pte``)."""
    pte = ctx.pv.mmu.make_entry(((ctx.pa(va) >> PAGE_SHIFT) << PAGE_SHIFT | prot) & supported_pte_mask(ctx))
    if HYPERVISOR_update_va_mapping(ctx, va, pte, 0):
        BUG(ctx, "arch/x86/xen/mmu.c", f"set_page_prot({va:#x})")


def supported_pte_mask(ctx: KernelContext) -> int:
    return ctx.rd(ctx.sym("__supported_pte_mask"))


def pin_pagetable_pfn(ctx: KernelContext, cmd: MmuExt, pfn: int) -> None:
    if HYPERVISOR_mmuext_op(ctx, [(cmd, pfn_to_mfn(ctx, pfn))]):
        BUG(ctx, "arch/x86/xen/mmu.c", f"pin_pagetable_pfn({cmd.name}, pfn {pfn:#x})")


# -- entry stores ----------------------------------------------------------------------------------------
def mask_rw_pte(ctx: KernelContext, ptep: int, pte: int) -> int:
    """64-bit ``mask_rw_pte`` (v3.9): a PTE mapping a page of the page-table buffer is made read-only —
    except in ``early_ioremap``'s PTE page when it maps the page just allocated."""
    st = ctx.mm
    if st is None or not pte & _PAGE_PRESENT:
        return pte
    pfn = pte_mfn_to_pfn(ctx, pte) >> PAGE_SHIFT  # pte_pfn(pte)
    bm = ctx.sym("bm_pte")
    early_ioremap = bm <= ptep < bm + PAGE_SIZE
    if (not early_ioremap and st.pgt_buf_start <= pfn < st.pgt_buf_top) or \
            (early_ioremap and pfn != st.pgt_buf_end - 1):
        return pte & ~_PAGE_RW
    return pte


def __xen_set_pte(ctx: KernelContext, ptep: int, pte: int) -> None:
    """Not in lazy MMU mode: one ``mmu_update`` straight away; v3.9 does not look at the result."""
    HYPERVISOR_mmu_update(ctx, [(virt_to_machine(ctx, ptep) | MMU_NORMAL_PT_UPDATE, pte)])


def xen_set_ptes(ctx: KernelContext, ptep: int, ptes: np.ndarray, *, init: bool) -> None:
    """A loop of ``xen_set_pte_init`` (``init``) or ``xen_set_pte`` over consecutive PTEs of one page: the
    same ``mask_rw_pte`` decisions and one ``mmu_update`` each. ``pte_pfn`` is decided on the mfn side:
    a PTE's pfn lies in the page-table buffer exactly when its mfn is one of the buffer pfns' mfns (the
    domain's p2m and the m2p agree on its own frames)."""
    ptes = ptes.astype(np.uint64)
    st = ctx.mm
    bm = ctx.sym("bm_pte")
    if init and st is not None:
        if bm <= ptep < bm + PAGE_SIZE:
            ptes = np.array([mask_rw_pte(ctx, ptep + 8 * i, int(v)) for i, v in enumerate(ptes.tolist())],
                            dtype=np.uint64)
        elif st.pgt_buf_top > st.pgt_buf_start:
            buf = pfns_to_mfns(ctx, np.arange(st.pgt_buf_start, st.pgt_buf_top, dtype=np.uint64))
            mfns = (ptes & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT)
            hit = np.isin(mfns, buf) & ((ptes & np.uint64(_PAGE_PRESENT)) != 0)
            ptes = np.where(hit, ptes & ~np.uint64(_PAGE_RW), ptes)
    hv(ctx).mmu_update_each(virt_to_machine(ctx, ptep) | MMU_NORMAL_PT_UPDATE, ptes)


def xen_set_pte_init(ctx: KernelContext, ptep: int, pte: int) -> None:
    __xen_set_pte(ctx, ptep, mask_rw_pte(ctx, ptep, pte))


def xen_set_pte(ctx: KernelContext, ptep: int, pte: int) -> None:
    __xen_set_pte(ctx, ptep, pte)


def xen_set_entry_hyper(ctx: KernelContext, ptr: int, val: int) -> None:
    """``xen_set_pmd_hyper`` / ``xen_set_pud_hyper`` / ``xen_set_pgd_hyper``: a one-entry batch."""
    xen_mc_batch(ctx)
    xen_mc_entry(ctx, "mmu_update", [(virt_to_machine(ctx, ptr), val)])
    xen_mc_issue(ctx)


def xen_set_entry(ctx: KernelContext, ptr: int, val: int) -> None:
    """``xen_set_pmd`` / ``xen_set_pud``: a page Xen does not hold pinned is written directly."""
    if not page_pinned(ctx, ptr):
        ctx.wr(ptr, val)
        return
    xen_set_entry_hyper(ctx, ptr, val)


def xen_set_pgd(ctx: KernelContext, ptr: int, val: int) -> None:
    """``xen_set_pgd``: the kernel entry and, for user slots, the user pgd's."""
    user = xen_get_user_pgd(ctx, ptr)
    if not page_pinned(ctx, ptr):
        ctx.wr(ptr, val)
        if user:
            ctx.wr(user, val)
        return
    xen_mc_batch(ctx)
    xen_mc_entry(ctx, "mmu_update", [(virt_to_machine(ctx, ptr), val)])
    if user:
        xen_mc_entry(ctx, "mmu_update", [(virt_to_machine(ctx, user), val)])
    xen_mc_issue(ctx)


# -- page-table pages --------------------------------------------------------------------------------------
def xen_alloc_pte_init(ctx: KernelContext, pfn: int) -> None:
    """Early in boot everything is pinned: the new PTE page becomes read-only and a pinned L1."""
    make_lowmem_page_readonly(ctx, ctx.va(pfn << PAGE_SHIFT))
    pin_pagetable_pfn(ctx, MmuExt.PIN_L1_TABLE, pfn)


def xen_alloc_pmd_init(ctx: KernelContext, pfn: int) -> None:
    """Used for pmd and pud pages: read-only, validated when linked."""
    make_lowmem_page_readonly(ctx, ctx.va(pfn << PAGE_SHIFT))


def xen_release_pte_init(ctx: KernelContext, pfn: int) -> None:
    pin_pagetable_pfn(ctx, MmuExt.UNPIN_TABLE, pfn)
    make_lowmem_page_readwrite(ctx, ctx.va(pfn << PAGE_SHIFT))


def xen_release_pmd_init(ctx: KernelContext, pfn: int) -> None:
    make_lowmem_page_readwrite(ctx, ctx.va(pfn << PAGE_SHIFT))


def xen_alloc_ptpage(ctx: KernelContext, pfn: int, level: int) -> None:
    """The full op: pinned (read-only, a PTE page also pinned as L1) only when attached to a pinned mm —
    ``init_mm``'s pgd is."""
    if page_pinned(ctx, ctx.layout.init_pgt):
        va = ctx.va(pfn << PAGE_SHIFT)
        set_page_pinned(ctx, va)
        make_lowmem_page_readonly(ctx, va)
        if level == PG_LEVEL_4K:  # PT_PTE with USE_SPLIT_PTLOCKS
            pin_pagetable_pfn(ctx, MmuExt.PIN_L1_TABLE, pfn)


def xen_release_ptpage(ctx: KernelContext, pfn: int, level: int) -> None:
    va = ctx.va(pfn << PAGE_SHIFT)
    if page_pinned(ctx, va):
        if level == PG_LEVEL_4K:
            pin_pagetable_pfn(ctx, MmuExt.UNPIN_TABLE, pfn)
        make_lowmem_page_readwrite(ctx, va)
        page = virt_to_page(ctx, va)
        ctx.wr(page, ctx.rd(page) & ~(1 << ctx.profile.pg_pinned_bit))


# -- CR3 -------------------------------------------------------------------------------------------------
def __xen_write_cr3(ctx: KernelContext, kernel: bool, cr3: int) -> None:
    """Queue MMUEXT_NEW_BASEPTR (or the user one) with the mfn of ``cr3``'s page."""
    mfn = pfn_to_mfn(ctx, cr3 >> PAGE_SHIFT) if cr3 else 0
    if mfn == 0 and kernel:
        ctx.print("WARNING: at arch/x86/xen/mmu.c: __xen_write_cr3: a kernel cr3 without an mfn")
    xen_mc_entry(ctx, "mmuext_op", [(MmuExt.NEW_BASEPTR if kernel else MmuExt.NEW_USER_BASEPTR, mfn)])
    if kernel:
        ctx.wr(ctx.sym("xen_cr3"), cr3)


def xen_get_user_pgd(ctx: KernelContext, pgd: int) -> int:
    """``xen_get_user_pgd``: for a user slot, the user pgd hanging off ``page->private`` of the pgd's
    struct page — a read of the vmemmap (spec §5.4)."""
    pgd_page = pgd & ~(PAGE_SIZE - 1)
    offset = (pgd - pgd_page) // 8
    if offset >= USER_LIMIT_PGD:
        return 0
    user = ctx.rd(virt_to_page(ctx, pgd_page) + ctx.profile.page_private_offset)
    return user + 8 * offset if user else 0


def xen_write_cr3_init(ctx: KernelContext, cr3: int) -> None:
    """The early ``write_cr3`` (seed 004's fix): the kernel base pointer only, no struct page."""
    xen_mc_batch(ctx)
    ctx.wr(ctx.sym("xen_cr3"), cr3)
    __xen_write_cr3(ctx, True, cr3)
    xen_mc_issue(ctx)


def xen_write_cr3(ctx: KernelContext, cr3: int) -> None:
    """The full ``write_cr3``: the kernel base pointer, and the user one from ``xen_get_user_pgd``."""
    xen_mc_batch(ctx)
    ctx.wr(ctx.sym("xen_cr3"), cr3)
    __xen_write_cr3(ctx, True, cr3)
    user = xen_get_user_pgd(ctx, ctx.va(cr3))
    __xen_write_cr3(ctx, False, ctx.pa(user) if user else 0)
    xen_mc_issue(ctx)


def xen_flush_tlb(ctx: KernelContext) -> None:
    xen_mc_batch(ctx)
    xen_mc_entry(ctx, "mmuext_op", [(MmuExt.TLB_FLUSH_LOCAL, 0)])
    xen_mc_issue(ctx)


def xen_flush_tlb_single(ctx: KernelContext, addr: int) -> None:
    xen_mc_batch(ctx)
    xen_mc_entry(ctx, "mmuext_op", [(MmuExt.INVLPG_LOCAL, addr & ~(PAGE_SIZE - 1))])
    xen_mc_issue(ctx)


def xen_read_cr2(ctx: KernelContext) -> int:
    """``vcpu_info->arch.cr2`` through the guest's ``xen_vcpu`` pointer: the dummy shared_info in the
    kernel image until ``xen_setup_shared_info`` maps the real one."""
    return ctx.rd(ctx.sym("xen_dummy_shared_info") + 0x10)
