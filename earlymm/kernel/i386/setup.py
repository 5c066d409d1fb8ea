"""``start_kernel`` → ``setup_arch`` up to ``paging_init`` (arch/i386/kernel/setup.c @ 2.6.21): the memory
map through ``paravirt_ops.memory_setup``, the command line's early parameters, ``setup_memory`` (the pfn
limits, highmem, the bootmem allocator and its reservations) and ``smp_alloc_memory``.

The order is setup_arch's. Everything that decides where ``pagetable_init`` finds its page-table pages is
here: bootmem hands out the lowest free page, so the reservations below 640 KiB place them.
"""

from __future__ import annotations

from earlymm.arch.cpuid import Vendor
from earlymm.hw.faults import Halt
from earlymm.kernel.cpufeature import x86_cpuid_vendor, x86_family
from earlymm.kernel.events import Note
from earlymm.kernel.i386.bootmem import Bootmem, pfn_down, pfn_up
from earlymm.kernel.i386.consts import COMMAND_LINE_SIZE, MAX_NONPAE_PFN, PAGE_SHIFT, PAGE_SIZE
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.i386.e820 import find_max_pfn, print_memory_map
from earlymm.platform import bootparams as bp

E820_RAM = 1


def _mb(pages: int) -> int:
    return pages >> (20 - PAGE_SHIFT)


def command_line(ctx: I386Context) -> str:
    raw = ctx.cpu.read(ctx.sym("boot_command_line"), COMMAND_LINE_SIZE)
    return raw.split(b"\0", 1)[0].decode("latin-1")


def parse_early_param(ctx: I386Context) -> None:
    """``parse_early_param`` for the one early parameter the page tables depend on: ``noexec=on|off``
    (arch/i386/mm/init.c ``noexec_setup``, PAE kernels only). Other parameters are not modelled."""
    if not ctx.pae:
        return
    for word in command_line(ctx).split():
        if word == "noexec=off":
            ctx.mm.disable_nx = True
        elif word in ("noexec", "noexec=on"):
            ctx.mm.disable_nx = False


def find_max_low_pfn(ctx: I386Context) -> int:
    """Model of find_max_low_pfn(), arch/i386/kernel/setup.c @ 2.6.21 with CONFIG_HIGHMEM (HIGHMEM4G
    without PAE, HIGHMEM64G with it); differences: no ``highmem=`` parameter. Lowmem ends at MAXMEM
    (896 MiB); a non-PAE kernel cannot use RAM above 4 GiB."""
    mm = ctx.mm
    maxmem_pfn = ctx.profile.maxmem_pfn
    if mm.max_pfn <= maxmem_pfn:
        return mm.max_pfn
    if not ctx.pae and mm.max_pfn > MAX_NONPAE_PFN:
        mm.max_pfn = MAX_NONPAE_PFN
        ctx.print("Warning only 4GB will be used.")
        ctx.print("Use a PAE enabled kernel.")
    return maxmem_pfn


def reserve_ebda_region(ctx: I386Context, bm: Bootmem) -> None:
    """``reserve_ebda_region``: ``get_bios_ebda()`` reads the BIOS data area word at 0x40E through
    ``phys_to_virt``; the 4 KiB there are reserved."""
    addr = ctx.rd(ctx.va(bp.BDA_EBDA_SEGMENT), 2) << 4
    if addr:
        bm.reserve(addr, PAGE_SIZE)


def setup_bootmem_allocator(ctx: I386Context) -> None:
    """Model of setup_bootmem_allocator(), arch/i386/kernel/setup.c @ 2.6.21; differences: no
    ``find_smp_config`` (the model's firmware has no MP table in RAM), no kexec crash kernel."""
    mm = ctx.mm
    bm = Bootmem(ctx, ctx.va(mm.min_low_pfn << PAGE_SHIFT), mm.max_low_pfn)  # init_bootmem(min_low_pfn, …)
    ctx.memset(bm.map_va, 0xFF, bm.mapsize)  # "all pages reserved" until e820 RAM is freed
    mm.bootmem = bm
    for start, size, kind in mm.e820:  # register_bootmem_low_pages(max_low_pfn)
        if kind != E820_RAM:
            continue
        curr, last = pfn_up(start), min(pfn_down(start + size), mm.max_low_pfn)
        if curr < mm.max_low_pfn and curr < last:
            bm.free(curr << PAGE_SHIFT, (last - curr) << PAGE_SHIFT)
    text = ctx.pa_symbol("_text")
    bm.reserve(text, (mm.min_low_pfn << PAGE_SHIFT) + bm.mapsize + PAGE_SIZE - 1 - text)  # the kernel and bitmap
    bm.reserve(0, PAGE_SIZE)  # page 0: "a special BIOS page on many boxes"
    reserve_ebda_region(ctx, bm)
    cpu = ctx.cpu
    if x86_cpuid_vendor(cpu) is Vendor.AMD and x86_family(cpu.cpuid(1)[0]) == 6:
        bm.reserve(0xA0000 - PAGE_SIZE, PAGE_SIZE)  # AMD 768MPX erratum #56
    if ctx.profile.smp:
        bm.reserve(PAGE_SIZE, PAGE_SIZE)  # "pinch a few for the stack/trampoline stuff"
    if ctx.profile.acpi_sleep:
        bm.alloc_low(PAGE_SIZE, "acpi_reserve_bootmem: S3 wakeup code")
    params = ctx.sym("boot_params")
    start, size = ctx.rd(params + bp.RAMDISK_IMAGE, 4), ctx.rd(params + bp.RAMDISK_SIZE, 4)
    if ctx.rd(params + bp.TYPE_OF_LOADER, 1) and start:
        if start + size <= mm.max_low_pfn << PAGE_SHIFT:
            bm.reserve(start, size)
        else:
            ctx.print(f"initrd extends beyond end of memory (0x{start + size:08x} > "
                      f"0x{mm.max_low_pfn << PAGE_SHIFT:08x})")
            ctx.print("disabling initrd")


def setup_memory(ctx: I386Context) -> None:
    """Model of setup_memory(), arch/i386/kernel/setup.c @ 2.6.21 (CONFIG_HIGHMEM); differences: none.
    ``min_low_pfn`` is the first page after head.S's tables: the bootmem bitmap goes there."""
    mm = ctx.mm
    mm.min_low_pfn = pfn_up(ctx.rd(ctx.sym("init_pg_tables_end"), 4))
    mm.max_pfn = find_max_pfn(ctx)
    mm.max_low_pfn = find_max_low_pfn(ctx)
    mm.highstart_pfn = mm.highend_pfn = mm.max_pfn
    if mm.max_pfn > mm.max_low_pfn:
        mm.highstart_pfn = mm.max_low_pfn
    ctx.print(f"{_mb(mm.highend_pfn - mm.highstart_pfn)}MB HIGHMEM available.")
    ctx.print(f"{_mb(mm.max_low_pfn)}MB LOWMEM available.")
    if mm.max_low_pfn <= mm.min_low_pfn:
        msg = "Kernel panic - not syncing: no low memory above the kernel for the bootmem allocator"
        ctx.print(msg)
        raise Halt(msg, outcome="panic", console="\n".join(ctx.console))
    setup_bootmem_allocator(ctx)


def smp_alloc_memory(ctx: I386Context) -> None:
    """``smp_alloc_memory`` (arch/i386/kernel/smpboot.c): the AP trampoline's page, "in very low memory so
    we can execute real-mode AP code" (BUG at or above 0x9F000)."""
    pa = ctx.mm.bootmem.alloc_low(PAGE_SIZE, "smp_alloc_memory: trampoline_base")
    if pa >= 0x9F000:
        ctx.print("kernel BUG at arch/i386/kernel/smpboot.c: trampoline above 0x9F000")
        raise Halt("kernel BUG: smp_alloc_memory's trampoline page is not in very low memory", outcome="oops",
                   console="\n".join(ctx.console))


def setup_arch_early(ctx: I386Context) -> None:
    """setup_arch() from its start to just before ``paging_init()``."""
    with ctx.running("setup_arch"):
        ctx.print("BIOS-provided physical RAM map:")
        print_memory_map(ctx, ctx.pv.init.memory_setup())
        parse_early_param(ctx)
        setup_memory(ctx)
        if ctx.profile.smp:
            smp_alloc_memory(ctx)
        mm = ctx.mm
        ctx.emit(Note(f"setup_memory: max_pfn {mm.max_pfn:#x}, max_low_pfn {mm.max_low_pfn:#x}, bootmem bitmap "
                      f"at {mm.min_low_pfn << PAGE_SHIFT:#x} ({mm.bootmem.mapsize} bytes)"))
