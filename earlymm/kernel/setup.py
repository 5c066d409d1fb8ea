"""``setup_arch``'s page-table steps (arch/x86/kernel/setup.c @ v3.9 and 6.1; spec §3.8), in source order:
``early_ioremap_init`` (the fixmap's ``bm_pte``, found through ``__va`` — early faults), the kernel's e820
from ``boot_params`` and its setup data, ``mem=``/``memmap=``, ``dmi_setup``'s BRK strings,
``trim_bios_range``, the BRK page-table buffer, ``cleanup_highmap``, memblock from e820 (partial pages
trimmed), the BIOS regions and the real-mode trampoline below 1 MiB, ``init_mem_mapping``, then the real
#PF handler (``early_trap_pf_init`` / ``idt_setup_early_pf``) and ``reserve_initrd``."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from earlymm.arch.addr import PhysAddr
from earlymm.hw.cpu import ExceptionFrame
from earlymm.hw.faults import Halt
from earlymm.kernel import e820 as e820mod
from earlymm.kernel.boot_data import ramdisk_range, setup_data_nodes
from earlymm.kernel.consts import _PAGE_NX, ISA_END_ADDRESS, PAGE_SHIFT, PAGE_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.cpufeature import X86Feature, boot_cpu_has
from earlymm.kernel.early_fault import write_gate
from earlymm.kernel.early_ioremap import early_ioremap_init, read_phys
from earlymm.kernel.events import Note
from earlymm.kernel.init import init_mem_mapping
from earlymm.kernel.init_64 import cleanup_highmap
from earlymm.kernel.memblock import Memblock
from earlymm.kernel.mm_state import MmState
from earlymm.kernel.phases import Phase
from earlymm.platform import bootparams as bp

BIOS_START_MIN, BIOS_START_MAX = 0x20000, 0x9F000
RESERVE_LOW = 64 << 10  # CONFIG_X86_RESERVE_LOW


def default_machine_specific_memory_setup(ctx: KernelContext, table: e820mod.E820Table) -> str:
    """x86_init's default ``memory_setup`` (v3.9 ``default_machine_specific_memory_setup``, 6.1
    ``e820__memory_setup_default``): the zero page's entries, sanitized."""
    b = ctx.layout["boot_params"]
    n = min(ctx.rd(b + bp.E820_ENTRIES, 1), bp.E820_MAX)
    raw = ctx.cpu.read(b + bp.E820_TABLE, 20 * n)
    for i in range(n):
        table.append(*struct.unpack_from("<QQI", raw, 20 * i))
    table.update_table()
    return "BIOS-e820"


def setup_memory_map(ctx: KernelContext) -> e820mod.E820Table:
    """``e820__memory_setup`` (v3.9 ``setup_memory_map``): ``x86_init.resources.memory_setup`` fills the
    table and names who provided it; the map is printed under that name."""
    table = e820mod.E820Table()
    who = (ctx.memory_setup or default_machine_specific_memory_setup)(ctx, table)
    for e in table.ignored:
        ctx.print(f"e820: too many entries; ignoring [mem {e.addr:#010x}-{e.end - 1:#010x}]")
    ctx.print("BIOS-provided physical RAM map:")
    for line in table.lines(who):
        ctx.print(line)
    return table


def parse_setup_data(ctx: KernelContext, table: e820mod.E820Table) -> None:
    """Model of ``parse_setup_data()`` (setup.c @ v3.9 and 6.1), right after the map is printed, for its
    SETUP_E820_EXT nodes: ``parse_e820_ext`` (v3.9) / ``e820__memory_setup_extended`` (6.1) reads the node
    through ``early_memremap``, appends its entries, sanitizes the table and prints it again as
    ``extended``. Other node types are not modelled."""
    for pa, kind, length in setup_data_nodes(ctx):
        if kind != bp.SETUP_E820_EXT:
            continue
        data = read_phys(ctx, PhysAddr(pa), 16 + length)
        if data is None:  # early_memremap refused: the kernel dereferences NULL
            ctx.rd(0x10, 4)
            continue
        full = len(table.ignored)
        for off in range(16, 16 + length - 19, 20):
            table.append(*struct.unpack_from("<QQI", data, off))
        for e in table.ignored[full:]:  # __e820__range_add says so as it drops each
            ctx.print(f"e820: too many entries; ignoring [mem {e.addr:#010x}-{e.end - 1:#010x}]")
        table.update_table()
        ctx.print("extended physical RAM map:")
        for line in table.lines("extended"):
            ctx.print(line)


def parse_early_param(ctx: KernelContext, table: e820mod.E820Table) -> None:
    """``mem=`` and ``memmap=`` from ``boot_command_line``; a changed map is printed as ``user:``."""
    raw = ctx.cpu.read(ctx.sym("boot_command_line"), 2048).split(b"\0", 1)[0].decode("latin-1")
    before = table.as_tuples()
    for w in e820mod.parse_mem_options(table, raw):
        ctx.print(w)
    if table.as_tuples() != before:
        ctx.print("user-defined physical RAM map:")
        for line in table.lines("user"):
            ctx.print(line)


def extend_brk(ctx: KernelContext, st: MmState, size: int, align: int) -> int:
    """``extend_brk``: carve ``size`` bytes from BRK; returns their kernel virtual address."""
    st.brk_end = (st.brk_end + align - 1) & ~(align - 1)
    if st.brk_end + size > ctx.sym("__brk_limit"):
        raise Halt("Kernel panic: extend_brk: BRK area exhausted", outcome="panic")
    at, st.brk_end = st.brk_end, st.brk_end + size
    return at


def dmi_setup(ctx: KernelContext, st: MmState) -> None:
    """``dmi_setup`` → ``dmi_scan_machine``: the identification strings are kept with ``dmi_alloc``, which
    is ``extend_brk(len, sizeof(int))``. Difference: the model takes the strings from the platform
    rather than scanning the SMBIOS entry point through ``early_memremap`` (whose transient fixmap PTEs
    are cleared again before anything looks)."""
    for s in ctx.platform.dmi:
        extend_brk(ctx, st, len(s) + 1, 4)
    if ctx.platform.dmi:
        ctx.print(f"DMI: {ctx.platform.dmi[3]} {ctx.platform.dmi[4]}, BIOS {ctx.platform.dmi[1]} "
                  f"{ctx.platform.dmi[2]}")


def trim_bios_range(table: e820mod.E820Table) -> None:
    """Page 0 is the BIOS's; 640 KiB – 1 MiB is never RAM (setup.c ``trim_bios_range``)."""
    table.range_update(0, PAGE_SIZE, e820mod.E820_RAM, e820mod.E820_RESERVED)
    table.range_remove(e820mod.BIOS_BEGIN, e820mod.BIOS_END - e820mod.BIOS_BEGIN, e820mod.E820_RAM)
    table.update_table()


def reserve_bios_regions(ctx: KernelContext, mb: Memblock) -> None:
    """Model of v3.9 ``reserve_ebda_region()`` (arch/x86/kernel/head.c @ v3.9) / 6.1
    ``reserve_bios_regions()`` (arch/x86/kernel/ebda.c @ 6.1): read the BIOS data area through ``__va``
    (base memory first, then the EBDA segment) and reserve from the firmware's area up to 1 MiB."""
    base = ctx.rd(ctx.va(bp.BDA_BASE_MEM_KIB), 2) << 10
    ebda = ctx.rd(ctx.va(bp.BDA_EBDA_SEGMENT), 2) << 4
    if ctx.profile.bios_regions == "6.1":
        start = base if BIOS_START_MIN <= base <= BIOS_START_MAX else BIOS_START_MAX
        if BIOS_START_MIN <= ebda < start:
            start = ebda
    else:
        start = base
        # head.c declares lowmem and ebda_addr unsigned int: an EBDA above lowmem wraps the difference to a
        # huge value, so lowmem stays
        if (start - ebda) & 0xFFFF_FFFF <= 0x10000:
            start = ebda
        if ebda == 0 and start >= 0x9F000:
            start = 0x9F000
        if start == 0 or start >= 0x100000:
            start = 0x9F000
    mb.reserve(start, 0x100000 - start)


def reserve_initrd_range(ctx: KernelContext, mb: Memblock) -> None:
    """``early_reserve_initrd``: ``memblock_reserve(ramdisk_image, PAGE_ALIGN(ramdisk_end) - ramdisk_image)``."""
    rd_image, rd_size = ramdisk_range(ctx)
    if rd_image and rd_size:
        mb.reserve(rd_image, (rd_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))


def early_reserve_memory(ctx: KernelContext, mb: Memblock) -> None:
    """Model of 6.1 ``early_reserve_memory()`` (arch/x86/kernel/setup.c @ 6.1), called by setup_arch after
    ``early_ioremap_init`` and before ``e820__memory_setup``: the kernel, the low 64 KiB ("some BIOSes are
    known to corrupt low memory", and page 0), the ramdisk, then the BIOS regions — all before memory is
    added to memblock, so ``e820__memblock_setup``'s dump and ``reserve_real_mode``'s search below 1 MiB see
    them. Differences: ``memblock_x86_reserve_range_setup_data``, ``reserve_ibft_region`` and
    ``trim_snb_memory`` are not modelled; the kernel is reserved to ``__bss_stop`` (the model's
    ``__end_of_kernel_reserve``)."""
    lay = ctx.layout
    mb.reserve(ctx.pa_symbol("_text"), lay["__bss_stop"] - lay.text)
    mb.reserve(0, RESERVE_LOW)  # memblock_reserve(0, SZ_64K)
    reserve_initrd_range(ctx, mb)
    reserve_bios_regions(ctx, mb)


def setup_arch_early(ctx: KernelContext) -> MmState:
    """Everything up to ``init_mem_mapping``: returns the mm state it prepared."""
    lay = ctx.layout
    mb = Memblock()
    st = MmState(mb, brk_end=max(ctx.brk_end, lay["__brk_base"]))
    for base, size in ctx.early_reservations:  # memblock_reserve() calls made before setup_arch
        mb.reserve(base, size)
    if ctx.profile.bios_regions == "v3.9":
        # x86_64_start_reservations: the kernel, the ramdisk, reserve_ebda_region (not paravirt)
        mb.reserve(ctx.pa_symbol("_text"), lay["__bss_stop"] - lay.text)  # memblock_reserve(_text.._bss_stop)
        reserve_initrd_range(ctx, mb)
        if not ctx.pv.paravirt_enabled:
            reserve_bios_regions(ctx, mb)
        early_ioremap_init(ctx)
    else:
        early_ioremap_init(ctx)
        early_reserve_memory(ctx, mb)
    table = setup_memory_map(ctx)
    parse_setup_data(ctx, table)
    if not boot_cpu_has(ctx.cpu, X86Feature.NX):
        st.supported_pte_mask &= ~_PAGE_NX  # x86_configure_nx()
    parse_early_param(ctx, table)
    dmi_setup(ctx, st)
    trim_bios_range(table)
    st.e820 = table.as_tuples()
    st.max_pfn = table.end_of_ram_pfn(ctx.maxmem >> PAGE_SHIFT)
    # early_alloc_pgt_buf(): INIT_PGT_BUF_SIZE from BRK, page aligned; reserve_brk() reserves what BRK used.
    pages = ctx.profile.init_pgt_buf_pages
    buf = extend_brk(ctx, st, pages * PAGE_SIZE, PAGE_SIZE)
    st.pgt_buf_start = st.pgt_buf_end = ctx.pa(buf) >> PAGE_SHIFT
    st.pgt_buf_top = st.pgt_buf_start + pages
    brk_start = lay["__brk_base"]
    mb.reserve(ctx.pa(brk_start), ((st.brk_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) - brk_start)
    cleanup_highmap(ctx, ctx.rd(lay["max_pfn_mapped"]), st.brk_end)  # 0 natively; set by Xen PV
    mb.current_limit = ISA_END_ADDRESS
    for a, s, t in st.e820:  # memblock_x86_fill() / e820__memblock_setup()
        if t == e820mod.E820_RAM:
            mb.add(a, s)
    mb.trim_memory(PAGE_SIZE)  # memblock_trim_memory(PAGE_SIZE): throw away partial pages
    pages_rm = ctx.profile.realmode_pages
    trampoline = mb.find_in_range(0, ISA_END_ADDRESS, pages_rm * PAGE_SIZE, PAGE_SIZE)  # reserve_real_mode()
    if trampoline:
        mb.reserve(trampoline, pages_rm * PAGE_SIZE)
    if ctx.profile.reserve_first_mb:
        mb.reserve(0, 1 << 20)  # "always reserve the first 1M of RAM"
    if ctx.profile.bios_regions == "v3.9":
        mb.reserve(0, RESERVE_LOW)  # trim_low_memory_range() (6.1: early_reserve_memory)
    mb.current_limit = (1 << 64) - 1
    ctx.emit(Note(f"memblock: {len(mb.memory)} memory ranges, max_pfn {st.max_pfn:#x}, "
                  f"BRK page-table buffer {pages} pages at {st.pgt_buf_start << PAGE_SHIFT:#x}"))
    return st


def page_fault(ctx: KernelContext, frame: ExceptionFrame) -> None:
    """The real #PF entry once the early handler is retired. Nothing this early expects a fault any more,
    so the model's ``do_page_fault`` ends in an oops, as a kernel-mode fault with no exception-table entry
    does."""
    msg = (f"BUG: unable to handle kernel paging request at {ctx.cpu.regs.cr2:016x} "
           f"(error code {frame.error_code:#x})")
    ctx.print(msg)
    raise Halt(msg, outcome="oops", console="\n".join(ctx.console))


def early_trap_pf_init(ctx: KernelContext) -> None:
    """v3.9 ``early_trap_pf_init`` / 6.1 ``idt_setup_early_pf``: IDT[14] → the real #PF entry (seed 000
    -v8: the early #PF handler is retired only here, after init_mem_mapping)."""
    lay, prof = ctx.layout, ctx.profile
    write_gate(ctx, lay["idt_table"], 14, lay["page_fault"])
    ctx.cpu.register_code(lay["page_fault"], prof.pf_entry, lambda f: page_fault(ctx, f))
    ctx.emit(Note(f"{prof.pf_init}: IDT[14] → {prof.pf_entry}; the early #PF handler is retired"))


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
    if ctx.pagetable_init is not None:  # x86_init.paging.pagetable_init (native paging_init is not modelled)
        st.memblock.current_limit = st.max_pfn_mapped << PAGE_SHIFT  # memblock_set_current_limit(get_max_mapped())
        ctx.enter_phase(Phase.PAGETABLE_INIT)
        ctx.pagetable_init(ctx, st)
        yield Phase.PAGETABLE_INIT
        ctx.enter_phase(Phase.END)
