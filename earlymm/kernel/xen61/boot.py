"""The 6.1 Xen PV boot path on Xen 4.17, from ``startup_xen`` to the return of ``init_mem_mapping``
(spec §5.3; arch/x86/xen/enlighten_pv.c ``xen_start_kernel``, arch/x86/kernel/setup.c ``setup_arch``
@ v6.1), as the page-table steps in their order:

``xen_start_kernel``: ``__supported_pte_mask`` loses ``_PAGE_GLOBAL`` (and ``_PAGE_NX`` without NX,
``x86_configure_nx``), ``xen_build_dynamic_phys_to_machine``, ``xen_setup_gdt`` (the boot GDT page
read-only), ``xen_setup_kernel_pagetable``; then ``setup_arch``: ``early_ioremap_init`` (``bm_pte``
pinned as an L1 under ``level2_fixmap_pgt``), ``e820__memory_setup`` = ``xen_memory_setup``,
``init_hypervisor_platform`` = ``xen_pv_init_platform`` (``shared_info`` at ``FIX_PARAVIRT_BOOTMAP``),
``trim_bios_range``, ``early_alloc_pgt_buf``'s BRK, ``cleanup_highmap``, then ``init_mem_mapping``
(``init_mm.py``) on memblock as ``e820__memblock_setup`` and the early reservations leave it.

Differences: steps that leave no trace in the tables are not run (the early IDT, CPU identification,
``dmi_setup``'s ``early_memremap``/``early_memunmap`` pairs, memblock); the fixmap indices are those of
the Debian 6.1 configuration (``fix_to_virt`` below).
"""

from __future__ import annotations

from earlymm.kernel.xen61.guest import (
    _PAGE_GLOBAL,
    _PAGE_NX,
    _PAGE_TABLE,
    KERNEL_IMAGE_SIZE,
    PAGE_KERNEL,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SIZE,
    START_KERNEL_MAP,
    Xen61Guest,
)
from earlymm.kernel.xen61.init_mm import InitMemMapping, PgtBuf
from earlymm.kernel.xen61.memblock import Memblock
from earlymm.kernel.xen61.memory import MemorySetup, e820_end_of_ram_pfn, xen_build_dynamic_phys_to_machine
from earlymm.kernel.xen61.mmu_pv import (
    entry_table,
    index,
    xen_alloc_pte_init,
    xen_load_gdt_boot,
    xen_setup_kernel_pagetable,
)
from earlymm.platform.xen.consts import UVMF_INVLPG
from earlymm.platform.xen.host417 import Dom0Machine

# arch/x86/include/asm/fixmap.h for the Debian 6.1 config (X86_VSYSCALL_EMULATION, X86_LOCAL_APIC,
# X86_IO_APIC with MAX_IO_APICS 128, no KMAP_LOCAL, PARAVIRT_XXL, ACPI_APEI_GHES):
VSYSCALL_ADDR = (-10 << 20) & ((1 << 64) - 1)
FIXADDR_TOP = ((VSYSCALL_ADDR + PAGE_SIZE + PMD_SIZE - 1) & ~(PMD_SIZE - 1)) - PAGE_SIZE
VSYSCALL_PAGE = (FIXADDR_TOP - VSYSCALL_ADDR) >> PAGE_SHIFT
FIX_APIC_BASE = VSYSCALL_PAGE + 3  # after FIX_DBGP_BASE, FIX_EARLYCON_MEM_BASE
FIX_IO_APIC_BASE_0 = FIX_APIC_BASE + 1
FIX_PARAVIRT_BOOTMAP = FIX_IO_APIC_BASE_0 + 128
END_OF_PERMANENT = FIX_PARAVIRT_BOOTMAP + 3  # FIX_APEI_GHES_IRQ, _NMI
TOTAL_FIX_BTMAPS = 64 * 8
FIX_BTMAP_END = (END_OF_PERMANENT + TOTAL_FIX_BTMAPS - (END_OF_PERMANENT & (TOTAL_FIX_BTMAPS - 1))
                 if (END_OF_PERMANENT ^ (END_OF_PERMANENT + TOTAL_FIX_BTMAPS - 1)) & -512 else END_OF_PERMANENT)
FIX_BTMAP_BEGIN = FIX_BTMAP_END + TOTAL_FIX_BTMAPS - 1
INIT_PGT_BUF_SIZE = 4 * 4 * PAGE_SIZE  # INIT_PGD_PAGE_COUNT: X86_5LEVEL (4 tables per PGD) × RANDOMIZE_MEMORY (4)
# dmi_scan_machine keeps the DMI strings of the platform's SMBIOS tables in BRK (dmi_alloc = extend_brk(len,
# 4)) before early_alloc_pgt_buf: QEMU's pc machine gives a few hundred bytes, so the page-aligned pgt_buf
# starts one page into BRK. Only that rounding is visible; the byte count is the model's estimate.
QEMU_PC_DMI_BRK = 512
SZ_64K = 64 << 10
E820_RESERVED_TYPE = 2


def fix_to_virt(idx: int) -> int:
    return FIXADDR_TOP - (idx << PAGE_SHIFT)


def extend_brk(g: Xen61Guest, size: int, align: int) -> int:
    at = (g.brk_end + align - 1) & ~(align - 1)
    g.brk_end = at + size
    return at


def xen_start_kernel(g: Xen61Guest) -> None:
    """``xen_start_kernel`` up to ``xen_setup_kernel_pagetable`` (included)."""
    g.supported_pte_mask &= ~_PAGE_GLOBAL
    xen_build_dynamic_phys_to_machine(g)
    if not g.m.cpu.features.nx:  # x86_configure_nx
        g.supported_pte_mask &= ~_PAGE_NX
    xen_load_gdt_boot(g, g.sym("__per_cpu_load") + g.sym("gdt_page"))  # xen_setup_gdt(0): switch_to_new_gdt
    xen_setup_kernel_pagetable(g, g.si.pt_base)


def early_ioremap_init(g: Xen61Guest) -> None:
    """``early_ioremap_init`` (arch/x86/mm/ioremap.c): ``bm_pte`` as the PTE page of the boot-time
    ioremap slots, found from CR3 (``early_ioremap_pmd``) and installed by ``pmd_populate_kernel``."""
    va = fix_to_virt(FIX_BTMAP_BEGIN)
    pgd = g.va(g.xen_cr3) + 8 * index(va, 39)
    pud = entry_table(g, g.rd(pgd)) + 8 * index(va, 30)
    pmd = entry_table(g, g.rd(pud)) + 8 * index(va, 21)
    bm = g.sym("bm_pte")
    g.write(bm, bytes(PAGE_SIZE))
    xen_alloc_pte_init(g, g.pa(bm) >> PAGE_SHIFT)  # paravirt_alloc_pte
    g.set_pmd_hyper(pmd, g.pte_pfn_to_mfn(g.pa(bm) | _PAGE_TABLE))
    g.note(f"early_ioremap_init: bm_pte under the pmd of {va:#x}")


def xen_pv_init_platform(g: Xen61Guest) -> None:
    """``xen_pv_init_platform``: ``populate_extra_pte`` (the fixmap's tables exist) and
    ``set_fixmap(FIX_PARAVIRT_BOOTMAP, shared_info)`` = ``xen_set_fixmap``: an mfn PTE by hypercall."""
    va = fix_to_virt(FIX_PARAVIRT_BOOTMAP)
    pte = g.mfn_pte(g.si.shared_info >> PAGE_SHIFT, PAGE_KERNEL)
    if g.update_va_mapping(va, pte, UVMF_INVLPG):
        g.bug("arch/x86/xen/mmu_pv.c", f"xen_set_fixmap(FIX_PARAVIRT_BOOTMAP, {g.si.shared_info:#x})")
    g.note(f"xen_pv_init_platform: shared_info at {va:#x}")


def cleanup_highmap(g: Xen61Guest) -> None:
    """``cleanup_highmap`` (init_64.c): kernel-map PMDs outside [_text, roundup(_brk_end, 2 MiB)) cleared,
    up to ``max_pfn_mapped`` (which Xen's path has set)."""
    vaddr, end_va = START_KERNEL_MAP, START_KERNEL_MAP + KERNEL_IMAGE_SIZE
    end = ((g.brk_end + PMD_SIZE - 1) & ~(PMD_SIZE - 1)) - 1
    if g.max_pfn_mapped:
        end_va = START_KERNEL_MAP + (g.max_pfn_mapped << PAGE_SHIFT)
    pmd, cleared = g.sym("level2_kernel_pgt"), 0
    while vaddr + PMD_SIZE - 1 < end_va:
        if g.rd(pmd) and (vaddr < g.sym("_text") or vaddr > end):
            g.set_pmd_hyper(pmd, 0)
            cleared += 1
        pmd += 8
        vaddr += PMD_SIZE
    g.note(f"cleanup_highmap: {cleared} kernel-map PMD(s) cleared, kept [_text, {end + 1:#x})")


def setup_arch_to_init_mem_mapping(g: Xen61Guest) -> None:
    early_ioremap_init(g)
    MemorySetup(g, [(int(r.start), int(r.end), 1 if r.kind.name == "RAM" else 2)
                    for r in g.m.machine_memory_map()]).run(g.m.maximum_reservation())
    xen_pv_init_platform(g)
    extend_brk(g, QEMU_PC_DMI_BRK, 4)  # dmi_setup
    trim_bios_range(g)
    g.max_pfn = e820_end_of_ram_pfn(g.e820)
    base = g.pa(extend_brk(g, INIT_PGT_BUF_SIZE, PAGE_SIZE)) >> PAGE_SHIFT  # early_alloc_pgt_buf
    g.pgt_buf = (base, base + (INIT_PGT_BUF_SIZE >> PAGE_SHIFT))
    cleanup_highmap(g)


def trim_bios_range(g: Xen61Guest) -> None:
    """``trim_bios_range``: the first page and the BIOS area [640 KiB, 1 MiB) are not RAM."""
    out = []
    for s, e, t in g.e820:
        if t != 1:
            out.append((s, e, t))
            continue
        for cs, ce in ((s, min(e, 0x1000)), (max(s, 0x1000), min(e, 0xA0000)), (max(s, 0x100000), e)):
            if cs < ce:
                out.append((cs, ce, t if cs >= 0x1000 else E820_RESERVED_TYPE))
    g.e820 = sorted(out)


def memblock_at_init_mem_mapping(g: Xen61Guest) -> Memblock:
    """``e820__memblock_setup`` and the reservations made before ``init_mem_mapping`` on this path."""
    mb = Memblock()
    for s, e, t in g.e820:
        if t == 1:
            mb.add(s, e - s)
    s_ = g.sym
    mb.reserve(g.pa(s_("_text")), s_("_end") - s_("_text"))  # early_reserve_memory: the image
    mb.reserve(0, SZ_64K)
    si = g.si
    if si.mod_start and si.mod_len:  # early_reserve_initrd
        start = si.mod_start << PAGE_SHIFT if si.flags & 8 else g.pa(si.mod_start)
        mb.reserve(start & ~(PAGE_SIZE - 1), -(-(si.mod_len + (start & (PAGE_SIZE - 1))) // PAGE_SIZE) * PAGE_SIZE)
    mb.reserve(g.pa(g.si_va) & ~(PAGE_SIZE - 1), PAGE_SIZE)  # xen_reserve_special_pages
    mb.reserve(*g.pt_kept)
    if si.mfn_list < START_KERNEL_MAP:  # xen_reserve_xen_mfnlist
        mb.reserve(si.first_p2m_pfn << PAGE_SHIFT, si.nr_p2m_frames << PAGE_SHIFT)
    for pfn, n in g.extra_mem:
        mb.reserve(pfn << PAGE_SHIFT, n << PAGE_SHIFT)
    mb.reserve(g.pa(s_("__brk_base")), g.brk_end - s_("__brk_base"))  # reserve_brk
    return mb


def init_mem_mapping(g: Xen61Guest) -> InitMemMapping:
    buf = PgtBuf(g.pgt_buf[0], g.pgt_buf[0], g.pgt_buf[1])
    imm = InitMemMapping(g, memblock_at_init_mem_mapping(g), buf)
    imm.run()
    return imm


STOPS = ("xen_start_kernel", "setup_arch", "init_mem_mapping")


def boot_61(m: Dom0Machine, syms: dict[str, int], until: str) -> Xen61Guest:
    """Run the guest from ``startup_xen`` to ``until`` (``xen_start_kernel``: its first instruction;
    ``setup_arch``: the entry of ``init_mem_mapping``; ``init_mem_mapping``: its return)."""
    g = Xen61Guest(m, syms, m.dom0.vstartinfo_start)
    if until == "xen_start_kernel":
        return g
    xen_start_kernel(g)
    setup_arch_to_init_mem_mapping(g)
    if until == "init_mem_mapping":
        init_mem_mapping(g)
    return g
