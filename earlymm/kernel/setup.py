"""``setup_arch``'s page-table steps, in v3.9 order (arch/x86/kernel/setup.c; spec §3.8):
memblock from e820, the BRK page-table buffer, ``cleanup_highmap``, ``init_mem_mapping``,
``early_trap_pf_init`` (the early #PF handler retired) and ``reserve_initrd``."""

from __future__ import annotations

from collections.abc import Iterator

from earlymm.hw.cpu import ExceptionFrame
from earlymm.hw.faults import Halt
from earlymm.kernel.boot_data import ramdisk_range, read_e820
from earlymm.kernel.consts import _PAGE_NX, ISA_END_ADDRESS, PAGE_SHIFT, PAGE_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.cpufeature import X86Feature, boot_cpu_has
from earlymm.kernel.early_fault import write_gate
from earlymm.kernel.events import Note
from earlymm.kernel.init import init_mem_mapping
from earlymm.kernel.init_64 import cleanup_highmap
from earlymm.kernel.memblock import Memblock
from earlymm.kernel.mm_state import E820_RAM, MmState
from earlymm.kernel.phases import Phase


def setup_arch_early(ctx: KernelContext) -> MmState:
    """Everything up to ``init_mem_mapping``: returns the mm state it prepared."""
    lay = ctx.layout
    mb = Memblock()
    mb.reserve(ctx.pa_symbol("_text"), lay["__bss_stop"] - lay.text)  # memblock_reserve(_text.._bss_stop)
    rd_image, rd_size = ramdisk_range(ctx)
    if rd_image and rd_size:
        mb.reserve(rd_image, (rd_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))  # early_reserve_initrd
    e820 = read_e820(ctx)
    maxmem_pfn = ctx.profile.maxmem >> PAGE_SHIFT
    st = MmState(mb, e820=e820)
    st.max_pfn = min(max((a + s) >> PAGE_SHIFT for a, s, t in e820 if t == E820_RAM), maxmem_pfn)
    if not boot_cpu_has(ctx.cpu, X86Feature.NX):
        st.supported_pte_mask &= ~_PAGE_NX  # x86_configure_nx()
    # early_alloc_pgt_buf(): INIT_PGT_BUF_SIZE from BRK; reserve_brk() then reserves what BRK used.
    brk = lay["__brk_base"]
    pages = ctx.profile.init_pgt_buf_pages
    st.pgt_buf_start = st.pgt_buf_end = ctx.pa(brk) >> PAGE_SHIFT
    st.pgt_buf_top = st.pgt_buf_start + pages
    st.brk_end = brk + pages * PAGE_SIZE
    mb.reserve(ctx.pa(brk), pages * PAGE_SIZE)
    cleanup_highmap(ctx, 0, st.brk_end)
    mb.current_limit = ISA_END_ADDRESS
    for a, s, t in e820:  # memblock_x86_fill()
        if t == E820_RAM:
            end = min(a + s, maxmem_pfn << PAGE_SHIFT)
            if end > a:
                mb.add(a, end - a)
    mb.reserve(0, 64 << 10)  # trim_low_memory_range(): reserve_low = 64 KiB
    ebda_end = ISA_END_ADDRESS
    mb.reserve(0x9F000, ebda_end - 0x9F000)  # reserve_ebda_region(): BIOS area below 1 MiB
    trampoline = mb.find_in_range(0, ISA_END_ADDRESS, 6 * PAGE_SIZE, PAGE_SIZE)  # reserve_real_mode()
    if trampoline:
        mb.reserve(trampoline, 6 * PAGE_SIZE)
    mb.current_limit = (1 << 64) - 1
    ctx.emit(Note(f"memblock: {len(mb.memory)} memory ranges, max_pfn {st.max_pfn:#x}, "
                  f"BRK page-table buffer {pages} pages at {st.pgt_buf_start << PAGE_SHIFT:#x}"))
    return st


def page_fault(ctx: KernelContext, frame: ExceptionFrame) -> None:
    """The real ``page_fault`` entry once ``early_trap_pf_init`` ran. Nothing this early expects a fault
    any more, so the model's ``do_page_fault`` ends in an oops, as a kernel-mode fault with no
    exception-table entry does."""
    msg = (f"BUG: unable to handle kernel paging request at {ctx.cpu.regs.cr2:016x} "
           f"(error code {frame.error_code:#x})")
    ctx.print(msg)
    raise Halt(msg, outcome="oops", console="\n".join(ctx.console))


def early_trap_pf_init(ctx: KernelContext) -> None:
    """``set_intr_gate(X86_TRAP_PF, &page_fault)``: the early #PF handler is retired (seed 000 -v8)."""
    lay = ctx.layout
    write_gate(ctx, lay["idt_table"], 14, lay["page_fault"])
    ctx.cpu.register_code(lay["page_fault"], "page_fault", lambda f: page_fault(ctx, f))
    ctx.emit(Note("early_trap_pf_init: IDT[14] → page_fault; the early #PF handler is retired"))


def reserve_initrd(ctx: KernelContext, st: MmState) -> None:
    """Use the ramdisk in place if the direct map now covers it, else it would be relocated."""
    image, size = ramdisk_range(ctx)
    if not image or not size:
        return
    lo, hi = image >> PAGE_SHIFT, (image + size + PAGE_SIZE - 1) >> PAGE_SHIFT
    mapped = any(s <= lo and hi <= e for s, e in st.pfn_mapped)
    if mapped:
        # initrd_start = __va(image): touch it through the final direct map (no early handler now).
        ctx.rd(ctx.va(image), 8)
        ctx.emit(Note(f"reserve_initrd: ramdisk [{image:#x}, {image + size:#x}) used in place at "
                      f"{ctx.va(image):#x}"))
    else:
        ctx.emit(Note(f"reserve_initrd: ramdisk [{image:#x}, {image + size:#x}) not in the direct map; "
                      "relocate_initrd would copy it below max_low_pfn"))


def setup_arch(ctx: KernelContext) -> Iterator[Phase]:
    """``setup_arch``'s page-table steps: yields ``SETUP_ARCH`` when everything before
    ``init_mem_mapping`` ran, then ``INIT_MEM_MAPPING`` after it; returns when done."""
    st = setup_arch_early(ctx)
    ctx.mm = st
    yield Phase.SETUP_ARCH
    ctx.enter_phase(Phase.INIT_MEM_MAPPING)
    init_mem_mapping(ctx, st)
    yield Phase.INIT_MEM_MAPPING
    ctx.enter_phase(Phase.END)
    early_trap_pf_init(ctx)
    reserve_initrd(ctx, st)
