"""``startup_32`` (arch/i386/kernel/head.S @ 2.6.21): BSS, the boot parameters, the non-PAE boot page
directory, paging on, the boot IDT of ``ignore_int`` gates, CR0's final bits, and ``start_kernel``.

Until paging is on the code runs at physical addresses and reaches its data as ``symbol - __PAGE_OFFSET``
(linear = physical); every access still goes through the CPU model. Whether the kernel is built for PAE
or not, head.S builds a 2-level directory: PAE is switched on only at the end of ``paging_init``.
"""

from __future__ import annotations

from earlymm.arch.flags import Cr0
from earlymm.hw.delivery import GATE32, ExceptionFrame
from earlymm.hw.faults import ERRCODE_VECTORS, Halt
from earlymm.kernel.events import Note
from earlymm.kernel.i386.consts import (
    BOOT_CS,
    COMMAND_LINE_SIZE,
    HEAD_S_FLAGS,
    IDT_ENTRIES,
    INIT_MAP_BEYOND_END,
    KERNEL_CS,
    PAGE_OFFSET,
    PAGE_SIZE,
    PARAM_SIZE,
    THREAD_SIZE,
)
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.i386.events import EntryStore, LeafRun

NEW_CL_POINTER = 0x228  # boot_params.hdr.cmd_line_ptr
PAGE_PDE_OFFSET = PAGE_OFFSET >> 20  # byte offset of PDE 768 in the directory


def startup_32(ctx: I386Context, esi: int) -> None:
    """Model of startup_32 (the boot CPU's path), arch/i386/kernel/head.S @ 2.6.21; differences: segment
    loads (``lgdt``, ``%ds``…) and ``check_x87`` are not modelled — the CPU model has flat segments; the
    old (pre-2.02) command-line protocol is not followed."""
    cpu, lay = ctx.cpu, ctx.layout
    with ctx.running("startup_32"):
        # Clear BSS first so that there are no surprises... (rep stosl)
        ctx.memset(lay.phys("__bss_start"), 0, lay["__bss_stop"] - lay["__bss_start"])
        # Copy bootup parameters out of the way (rep movsl from %esi)
        params = lay.phys("boot_params")
        cpu.write(params, cpu.read(esi, PARAM_SIZE))
        cl = ctx.rd(params + NEW_CL_POINTER, 4)
        if cl:
            cpu.write(lay.phys("boot_command_line"), cpu.read(cl, COMMAND_LINE_SIZE))
        end = build_boot_page_tables(ctx)
        ctx.emit(Note(f"head.S: swapper_pg_dir at {lay.phys('swapper_pg_dir'):#x}; pg0 [{lay.phys('pg0'):#x}, "
                      f"{end:#x}) maps 0 – {_mapped_end(ctx, end) >> 20} MiB at 0 and at PAGE_OFFSET"))
        # Enable paging
        cpu.write_cr3(lay.phys("swapper_pg_dir"))
        cpu.write_cr0(cpu.regs.cr0 | int(Cr0.PG))
        cpu.far_jump(lay["startup_32"] + 0x80, long_mode_code=False, cs=BOOT_CS)  # ljmp: now at PAGE_OFFSET
        cpu.regs.rsp = lay["init_thread_union"] + THREAD_SIZE  # lss stack_start,%esp
        cpu.regs.rsp -= 4  # pushl $0; popfl
        ctx.wr(cpu.regs.rsp, 0)
        cpu.regs.rflags = ctx.rd(cpu.regs.rsp) | 0x2
        cpu.regs.rsp += 4
        setup_idt(ctx)
        # checkCPUtype: CPUID present (is486 path): set AM, WP, NE and MP, keep PG, PE and ET
        cpu.write_cr0((cpu.regs.cr0 & 0x8000_0011) | 0x5_0022)
        cpu.lidt(lay["idt_table"], IDT_ENTRIES * 8 - 1)  # lidt idt_descr
        cpu.far_jump(lay["startup_32"] + 0x100, long_mode_code=False, cs=KERNEL_CS)
        cpu.regs.rsp -= 4  # call start_kernel
        ctx.wr(cpu.regs.rsp, lay["L6"])
        cpu.jump(lay["start_kernel"])


def build_boot_page_tables(ctx: I386Context) -> int:
    """head.S's loop at label 10: one page table after another from ``pg0``, each entered as identity PDE
    i and kernel PDE 768 + i (flags 0x007, PRESENT+RW+USER), filled with 1024 PTEs of 0x007, until the map
    reaches INIT_MAP_BEYOND_END past the tables themselves. Returns ``init_pg_tables_end`` (physical)."""
    cpu, lay = ctx.cpu, ctx.layout
    edi, edx, eax = lay.phys("pg0"), lay.phys("swapper_pg_dir"), HEAD_S_FLAGS
    while True:
        ecx = edi + HEAD_S_FLAGS  # leal 0x007(%edi),%ecx: Create PDE entry
        for where in (edx, edx + PAGE_PDE_OFFSET):  # identity PDE, kernel PDE (paging is off: pa = va)
            old = ctx.platform.mem.read_int(where, 4)
            ctx.emit(EntryStore("startup_32", "movl", where & ~0xFFF, (where & 0xFFF) // 4, old, ecx))
            ctx.wr(where, ecx, 4)
        edx += 4
        ptes = b"".join(((eax + PAGE_SIZE * k) & 0xFFFF_FFFF).to_bytes(4, "little") for k in range(1024))
        cpu.write(edi, ptes)  # movl $1024,%ecx; stosl; addl $0x1000,%eax; loop
        ctx.emit(LeafRun("startup_32", "pte", edi, 0, 1024, 0, eax))
        edi += PAGE_SIZE
        eax += PAGE_SIZE * 1024
        if not eax < edi + INIT_MAP_BEYOND_END + HEAD_S_FLAGS:  # leal (INIT_MAP_BEYOND_END+7)(%edi); jb 10b
            break
    ctx.wr(lay.phys("init_pg_tables_end"), edi, 4)
    return edi


def _mapped_end(ctx: I386Context, tables_end: int) -> int:
    return (tables_end - ctx.layout.phys("pg0")) // PAGE_SIZE * (4 << 20)


def setup_idt(ctx: I386Context) -> None:
    """``setup_idt``: 256 interrupt gates (DPL 0, present) to ``ignore_int`` in __KERNEL_CS; the IDT is
    loaded later (``lidt idt_descr``), once the kernel runs at PAGE_OFFSET."""
    lay = ctx.layout
    lo, _hi = GATE32.encode(lay["ignore_int"], KERNEL_CS)
    ctx.cpu.write(lay["idt_table"], lo.to_bytes(8, "little") * IDT_ENTRIES)
    ctx.cpu.register_code(lay["ignore_int"], "ignore_int", lambda f: ignore_int(ctx, f))


def ignore_int(ctx: I386Context, frame: ExceptionFrame) -> None:
    """``ignore_int``, the boot IDT's only handler: it pushes eax, ecx, edx, es, ds and prints
    ``"Unknown interrupt or fault at EIP %p %p %p"`` with the three words above the entry stack pointer
    in the order 8(%esp), 4(%esp), 0(%esp) of the frame (%p: eight hex digits), then ``iret``s. For an
    exception that pushed an error code that ``iret`` pops the error code as EIP and the old EIP as CS:
    the CPU never returns to the kernel (each #GP on the bogus CS lands here again) — the run ends as a
    hang. Without an error code the faulting instruction is retried (the CPU's guard ends a loop)."""
    entry = frame.frame_addr - (4 if frame.vector in ERRCODE_VECTORS else 0)
    words = [ctx.rd(entry + 4 * k, 4) for k in range(3)]
    text = f"Unknown interrupt or fault at EIP {words[2]:08x} {words[1]:08x} {words[0]:08x}"
    ctx.print(text)
    if frame.vector in ERRCODE_VECTORS:
        raise Halt(f"{text} — ignore_int's iret pops the error code {words[0]:#x} as EIP and EIP {words[1]:#x} "
                   "as CS: the kernel never continues", outcome="hang", console="\n".join(ctx.console))
