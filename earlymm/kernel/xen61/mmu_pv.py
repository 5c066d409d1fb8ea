"""The early Xen PV MMU of Linux 6.1 (arch/x86/xen/mmu_pv.c, enlighten_pv.c @ v6.1; spec §5.3), in
Linux's names: the init-time ops ``xen_init_mmu_ops`` installs, ``xen_setup_kernel_pagetable``, the
boot GDT, and the helpers they use.

Differences from the source: the multicall batch is issued at once (``xen_mc_batch``/``xen_mc_issue``
collapse to the hypercall); ``HYPERVISOR_set_gdt`` (after ``xen_load_gdt_boot`` made the page
read-only) and ``xen_reserve_special_pages``/``memblock_reserve`` of the bootstrap tables are not run.
"""

from __future__ import annotations

from earlymm.kernel.xen61.guest import (
    _PAGE_NX,
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    PAGE_KERNEL,
    PAGE_KERNEL_RO,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_PFN_MASK,
    START_KERNEL_MAP,
    Xen61Guest,
)
from earlymm.platform.xen.consts import UVMF_INVLPG, MmuExt

FIXMAP_PMD_NUM = 2
PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G = 1, 2, 3


def index(va: int, shift: int) -> int:
    return (va >> shift) & 511


def entry_table(g: Xen61Guest, e: int) -> int:
    """``pXd_page_vaddr``: the direct-map address of the table an entry names (``__va(pXd_val & mask)``)."""
    return g.va(g.pte_mfn_to_pfn(e) & PTE_PFN_MASK)


def lookup_address(g: Xen61Guest, va: int) -> tuple[int, int] | None:
    """``lookup_address`` (pageattr.c) in ``init_mm``: the entry mapping ``va`` and its level."""
    pgd = g.sym("init_top_pgt") + 8 * index(va, 39)
    e = g.rd(pgd)
    if not e:
        return None
    pud = entry_table(g, e) + 8 * index(va, 30)
    e = g.rd(pud)
    if not e:
        return None
    if e & _PAGE_PSE or not e & _PAGE_PRESENT:
        return pud, PG_LEVEL_1G
    pmd = entry_table(g, e) + 8 * index(va, 21)
    e = g.rd(pmd)
    if not e:
        return None
    if e & _PAGE_PSE or not e & _PAGE_PRESENT:
        return pmd, PG_LEVEL_2M
    return entry_table(g, e) + 8 * index(va, 12), PG_LEVEL_4K


def make_lowmem_page_readonly(g: Xen61Guest, va: int) -> None:
    found = lookup_address(g, va)
    if found is None:
        return  # vaddr missing
    if g.update_va_mapping(va, g.rd(found[0]) & ~_PAGE_RW, 0):
        g.bug("arch/x86/xen/mmu_pv.c", f"make_lowmem_page_readonly({va:#x})")


def set_page_prot_flags(g: Xen61Guest, va: int, prot: int, flags: int) -> None:
    if g.update_va_mapping(va, g.pfn_pte(g.pa(va) >> PAGE_SHIFT, prot), flags):
        g.bug("arch/x86/xen/mmu_pv.c", f"set_page_prot({va:#x}, {prot:#x})")


def set_page_prot(g: Xen61Guest, va: int, prot: int) -> None:
    set_page_prot_flags(g, va, prot, 0)


def pin_pagetable_pfn(g: Xen61Guest, cmd: MmuExt, pfn: int) -> None:
    if g.mmuext_op([(cmd, g.pfn_to_mfn(pfn))]):
        g.bug("arch/x86/xen/mmu_pv.c", f"pin_pagetable_pfn({cmd.name}, {pfn:#x})")


def xen_alloc_pte_init(g: Xen61Guest, pfn: int) -> None:
    """``xen_alloc_pte_init``: the new PTE page read-only in the direct map, then pinned as an L1."""
    make_lowmem_page_readonly(g, g.va(pfn << PAGE_SHIFT))
    pin_pagetable_pfn(g, MmuExt.PIN_L1_TABLE, pfn)


def xen_set_pte_init(g: Xen61Guest, ptep: int, pte: int) -> None:
    """``xen_set_pte_init``: early-ioremap PTEs by hypercall, everything else ``native_set_pte`` — a plain
    store, which Xen emulates when the page is an L1 (``ptwr``)."""
    bm = g.sym("bm_pte")
    if bm <= ptep < bm + PAGE_SIZE:
        if g.mmu_update([(g.virt_to_machine(ptep), pte)]):
            g.bug("arch/x86/xen/mmu_pv.c", f"__xen_set_pte({ptep:#x})")
    else:
        g.wr(ptep, pte)


def xen_flush_tlb_one_user(g: Xen61Guest, va: int) -> None:
    g.mmuext_op([(MmuExt.INVLPG_LOCAL, va & ~(PAGE_SIZE - 1))])


def xen_write_cr3_init(g: Xen61Guest, cr3: int) -> None:
    """``__xen_write_cr3(true, cr3)`` in a batch: the kernel base pointer only (no user pgd yet)."""
    mfn = g.pfn_to_mfn(cr3 >> PAGE_SHIFT)
    g.xen_cr3 = cr3
    if g.mmuext_op([(MmuExt.NEW_BASEPTR, mfn)]):
        g.bug("arch/x86/xen/mmu_pv.c", f"__xen_write_cr3({cr3:#x})")


def xen_load_gdt_boot(g: Xen61Guest, va: int) -> None:
    """``xen_load_gdt_boot``: the GDT page remapped ``PAGE_KERNEL_RO`` (Xen takes it as a descriptor
    table, which no writable mapping may exist of)."""
    if g.update_va_mapping(va, g.pfn_pte(g.pa(va) >> PAGE_SHIFT, PAGE_KERNEL_RO), 0):
        g.bug("arch/x86/xen/enlighten_pv.c", f"xen_load_gdt_boot({va:#x})")


def m2v(g: Xen61Guest, maddr: int) -> int:
    """``m2v``: ``__ka(m2p(maddr))`` — a machine address in an entry to the kernel-map address."""
    return (g.mfn_to_pfn((maddr & PTE_PFN_MASK) >> PAGE_SHIFT) << PAGE_SHIFT) + START_KERNEL_MAP


def convert_pfn_mfn(g: Xen61Guest, table: int) -> None:
    """Every entry through ``xen_make_pte``: head_64.S assembled pfns."""
    for i in range(512):
        g.wr(table + 8 * i, g.pte_pfn_to_mfn(g.rd(table + 8 * i)))


def check_pt_base(g: Xen61Guest, pt: list[int], addr: int) -> None:
    """``check_pt_base``: a bootstrap table page at either end of [pt_base, pt_end) is given back —
    mapped ``PAGE_KERNEL`` again and cleared."""
    for end, step in ((0, 1), (1, -1)):
        if pt[end] == g.pa(addr) >> PAGE_SHIFT:
            set_page_prot_flags(g, addr, PAGE_KERNEL, UVMF_INVLPG)
            g.write(addr, bytes(PAGE_SIZE))
            pt[end] += step


def xen_setup_kernel_pagetable(g: Xen61Guest, pgd: int) -> None:
    """Model of ``xen_setup_kernel_pagetable(pgd, max_pfn)``, arch/x86/xen/mmu_pv.c @ v6.1: graft the
    builder's kernel L2 into ``level2_ident_pgt`` (no-execute) and ``level2_kernel_pgt``, keep the p2m
    list's L4 entry, make the static tables read-only, pin ``init_top_pgt`` and the vsyscall L3, unpin
    the builder's L4, switch to ``init_top_pgt`` and give back the freed bootstrap pages. Unlike v3.9
    there is no identity-extension step (the builder's L2 already maps what the kernel needs)."""
    si, s = g.si, g.sym
    if si.mfn_list < START_KERNEL_MAP:
        g.max_pfn_mapped = si.first_p2m_pfn
    else:
        g.max_pfn_mapped = g.pa(si.mfn_list) >> PAGE_SHIFT
    pt = [g.pa(si.pt_base) >> PAGE_SHIFT, (g.pa(si.pt_base) >> PAGE_SHIFT) + si.nr_pt_frames]
    top = s("init_top_pgt")
    g.wr(top, 0)  # zap the identity mapping
    for name in ("init_top_pgt", "level3_ident_pgt", "level3_kernel_pgt", "level2_fixmap_pgt"):
        convert_pfn_mfn(g, s(name))
    l3 = m2v(g, g.rd(pgd + 8 * index(START_KERNEL_MAP, 39)))
    l2 = m2v(g, g.rd(l3 + 8 * index(START_KERNEL_MAP, 30)))
    addr = [pgd, l3, l2]
    g.write(s("level2_ident_pgt"), g.read(l2, PAGE_SIZE))
    g.write(s("level2_kernel_pgt"), g.read(l2, PAGE_SIZE))
    if g.supported_pte_mask & _PAGE_NX:  # no execute in the ident map: at the L2, the L1s are shared
        ident = s("level2_ident_pgt")
        for i in range(512):
            e = g.rd(ident + 8 * i)
            if e:
                g.wr(ident + 8 * i, e | _PAGE_NX)
    i = index(si.mfn_list, 39)
    if i and i < index(START_KERNEL_MAP, 39):  # the p2m list outside the kernel map: keep its mapping
        g.wr(top + 8 * i, g.rd(si.pt_base + 8 * i))
    g.note(f"xen_setup_kernel_pagetable: builder's L2 {l2:#x} grafted into level2_ident/kernel_pgt"
           + (f"; L4[{i}] (the p2m list) copied" if i and i < 511 else ""))
    for name in ("init_top_pgt", "level3_ident_pgt", "level3_kernel_pgt", "level2_ident_pgt",
                 "level2_kernel_pgt", "level2_fixmap_pgt"):
        set_page_prot(g, s(name), PAGE_KERNEL_RO)
    for k in range(FIXMAP_PMD_NUM):
        set_page_prot(g, s("level1_fixmap_pgt") + k * PAGE_SIZE, PAGE_KERNEL_RO)
    pin_pagetable_pfn(g, MmuExt.PIN_L4_TABLE, g.pa(top) >> PAGE_SHIFT)
    pin_pagetable_pfn(g, MmuExt.UNPIN_TABLE, g.pa(pgd) >> PAGE_SHIFT)
    set_page_prot(g, s("level3_user_vsyscall"), PAGE_KERNEL_RO)  # CONFIG_X86_VSYSCALL_EMULATION
    pin_pagetable_pfn(g, MmuExt.PIN_L3_TABLE, g.pa(s("level3_user_vsyscall")) >> PAGE_SHIFT)
    xen_write_cr3_init(g, g.pa(top))
    for a in addr:
        check_pt_base(g, pt, a)
    g.pt_kept = (pt[0] << PAGE_SHIFT, (pt[1] - pt[0]) << PAGE_SHIFT)  # memblock_reserve(xen_pt_base, xen_pt_size)
    g.note(f"xen_setup_kernel_pagetable: init_top_pgt pinned and loaded; bootstrap tables kept "
           f"[{pt[0]:#x}, {pt[1]:#x})")
    g.si_va = g.va(g.pa(g.si_va))  # revector xen_start_info to __va
