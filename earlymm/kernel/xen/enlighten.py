"""The Xen PV entry and what runs before and after the common page-table code (arch/x86/xen/xen-head.S
``startup_xen``; enlighten.c ``xen_start_kernel``; setup.c ``xen_memory_setup``; mmu.c
``xen_pagetable_init``, ``xen_post_allocator_init`` @ v3.9; spec §5.3).

Differences: only what concerns memory and page tables is modelled — the time, console, SMP and
interrupt setup of ``xen_start_kernel`` is not; ``xen_setup_shared_info``'s fixmap mapping and the p2m
revectoring of ``xen_pagetable_init`` are not modelled.
"""

from __future__ import annotations

from earlymm.arch.addr import VirtAddr
from earlymm.hw.delivery import GATE64
from earlymm.kernel import e820 as e820mod
from earlymm.kernel.boot_data import copy_bootdata
from earlymm.kernel.consts import _PAGE_GLOBAL, ISA_END_ADDRESS, KERNEL_CS, PAGE_SHIFT, PAGE_SIZE, THREAD_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import Note
from earlymm.kernel.paravirt.ops import PvOps
from earlymm.kernel.paravirt.xen import XenCpuOps, XenMmuOps
from earlymm.kernel.xen.hypercall import guest, hv
from earlymm.kernel.xen.mmu import set_page_pinned
from earlymm.kernel.xen.setup_pgt import xen_setup_kernel_pagetable
from earlymm.kernel.xen.state import XenGuest
from earlymm.platform import bootparams as bp
from earlymm.platform.xen.consts import (
    SI_CMD_LINE,
    SI_MFN_LIST,
    SI_MOD_LEN,
    SI_MOD_START,
    SI_NR_PAGES,
    SI_PT_BASE,
    SI_SHARED_INFO,
)

ISA_START_ADDRESS = 0xA0000
GATE_INTERRUPT_SYSTEM = 0xEE  # set_system_intr_gate: DPL 3




def startup_xen(ctx: KernelContext, write_cr3_late: bool, bug: str = "") -> None:
    """xen-head.S: the stack in ``init_thread_union``, ``%rsi`` saved in ``xen_start_info``."""
    lay = ctx.layout
    ctx.cpu.regs.rsp = lay["init_thread_union"] + THREAD_SIZE
    si = ctx.platform.entry.boot_data
    ctx.wr(lay["xen_start_info"], si)
    ctx.xen = XenGuest(si, write_cr3_late=write_cr3_late, bug=bug)
    if bug == "native-cpuid":
        ctx.cpu.cpuid_filter = None  # the guest bypasses xen_cpuid (on a CPU without CPUID faulting)


def xen_memory_setup(ctx: KernelContext, table: e820mod.E820Table) -> str:
    """x86_init.resources.memory_setup under Xen: XENMEM_memory_map, or for a domU without one (ENOSYS)
    a single RAM region of the domain's pages (its 8 MiB slack cut off again at max_pfn); the ISA range
    reserved anyway; the p2m list, start_info and the ring pages reserved in memblock."""
    g = guest(ctx)
    mem_end = g.nr_pages << PAGE_SHIFT
    rc, entries = hv(ctx).memory_op_memory_map()
    if rc == -38:  # -ENOSYS
        entries = [(0, mem_end + (8 << 20), e820mod.E820_RAM)]
    for addr, size, kind in entries:
        if kind == e820mod.E820_RAM and addr + size > mem_end:
            size = max(0, mem_end - addr)  # truncated to max_mem: the rest would be ballooned
        if size:
            table.append(addr, size, kind)
    table.append(ISA_START_ADDRESS, ISA_END_ADDRESS - ISA_START_ADDRESS, e820mod.E820_RESERVED)
    table.update_table()
    si = g.start_info
    mfn_list, pt_base = ctx.rd(si + SI_MFN_LIST), ctx.rd(si + SI_PT_BASE)
    ctx.early_reservations.append((ctx.pa(mfn_list), pt_base - mfn_list))
    return "Xen"


def xen_start_kernel(ctx: KernelContext) -> None:
    """``xen_start_kernel`` as far as memory goes: the m2p's size, Xen's pv_ops (the early MMU ops),
    ``__supported_pte_mask`` without _PAGE_GLOBAL, the p2m, ``xen_setup_kernel_pagetable``, boot_params
    filled from start_info, then ``x86_64_start_reservations``' ``copy_bootdata``."""
    lay, g = ctx.layout, guest(ctx)
    si = g.start_info
    g.machine_to_phys_nr = hv(ctx).memory_op_machphys_mapping()  # xen_setup_machphys_mapping
    ctx.pv = PvOps(XenMmuOps(ctx), XenCpuOps(ctx), paravirt_enabled=True)
    ctx.memory_setup = xen_memory_setup
    ctx.emit(Note("xen_start_kernel: pv_ops = Xen (write_cr3 = "
                  f"{'xen_write_cr3, the kernel before the fix' if g.write_cr3_late else 'xen_write_cr3_init'}); "
                  "x86_init.resources.memory_setup = xen_memory_setup"))
    mask = lay["__supported_pte_mask"]
    ctx.wr(mask, ctx.rd(mask) & ~_PAGE_GLOBAL)  # "prevent unwanted bits from being set in PTEs"
    g.mfn_list, g.nr_pages = ctx.rd(si + SI_MFN_LIST), ctx.rd(si + SI_NR_PAGES)  # the p2m
    g.shared_info = ctx.rd(si + SI_SHARED_INFO)
    xen_setup_kernel_pagetable(ctx, ctx.rd(si + SI_PT_BASE), g.nr_pages)
    b = lay["boot_params"]
    mod_start, mod_len = ctx.rd(si + SI_MOD_START), ctx.rd(si + SI_MOD_LEN)
    ctx.wr(b + bp.TYPE_OF_LOADER, 9 << 4, 1)
    ctx.wr(b + bp.RAMDISK_IMAGE, ctx.pa(mod_start) if mod_start else 0, 4)
    ctx.wr(b + bp.RAMDISK_SIZE, mod_len, 4)
    ctx.wr(b + bp.CMD_LINE_PTR, ctx.pa(si + SI_CMD_LINE), 4)
    # x86_64_start_reservations: boot_params.hdr.version is 0, so copy_bootdata(__va(real_mode_data))
    copy_bootdata(ctx, ctx.va(ctx.pa_symbol("boot_params")))


def early_trap_init(ctx: KernelContext) -> None:
    """``early_trap_init``: #DB and #BP gates, then ``load_idt`` — under Xen the first trap table."""
    lay = ctx.layout
    for vector, target, attr in ((1, lay["debug"], 0x8E), (3, lay["int3"], GATE_INTERRUPT_SYSTEM)):
        lo, hi = GATE64.encode(target, KERNEL_CS, attr)
        ctx.pv.cpu.write_idt_entry(VirtAddr(lay["idt_table"]), vector, lo, hi)
    ctx.pv.cpu.load_idt(VirtAddr(lay["idt_table"]), 256 * 16 - 1)


def xen_post_allocator_init(ctx: KernelContext) -> None:
    """Install the full MMU ops; ``level3_user_vsyscall`` and every page of ``init_mm``'s tables get
    PG_pinned in their struct page (``xen_mark_init_mm_pinned``): the vmemmap is written."""
    mmu = ctx.pv.mmu
    assert isinstance(mmu, XenMmuOps)
    mmu.post_allocator_init()
    set_page_pinned(ctx, ctx.layout["level3_user_vsyscall"])
    n = xen_mark_init_mm_pinned(ctx)
    ctx.emit(Note(f"xen_mark_init_mm_pinned: PG_pinned set in the struct pages of {n} page-table pages"))


def xen_mark_init_mm_pinned(ctx: KernelContext) -> int:
    """``xen_pgd_walk(&init_mm, xen_mark_pinned, FIXADDR_TOP)``: every table page below the limit, the
    hypervisor's slots skipped, then the pgd itself."""
    g, lay = ctx.pgt, ctx.layout
    pgd = lay.init_pgt
    count = 0

    def walk(table: int, level: int) -> None:
        nonlocal count
        for i in range(512):
            if level == 4 and 256 <= i < 272:
                continue  # the Xen hole: [pgd_index(USER_LIMIT), pgd_index(PAGE_OFFSET))
            e = ctx.rd(table + 8 * i)
            if not e or (level == 2 and e & 0x80):
                continue
            child = ctx.va(ctx.entry_val(e) & g.pte_pfn_mask)
            set_page_pinned(ctx, child)
            count += 1
            if level > 2:
                walk(child, level - 1)

    walk(pgd, 4)
    set_page_pinned(ctx, pgd)
    return count + 1


def max_pfn_of(ctx: KernelContext) -> int:
    return guest(ctx).nr_pages * PAGE_SIZE
