"""The decompressor's switch between 4- and 5-level paging (arch/x86/boot/compressed/head_64.S and
pgtable_64.c; spec §1.8, §4; seed 003), executed step by step on the CPU model.

CR4.LA57 can change only with paging off, paging can be turned off only from 32-bit code, and 32-bit code
runs — and loads CR3 — below 4 GiB. Three versions of the dance:

* ``v4.14``: the 32-bit code and the new top-level table are inside the decompressor. Below 4 GiB it works;
  above, the far return into compatibility mode truncates RIP to 32 bits and the CPU fetches from
  somewhere else — control is lost, as Kirill wrote in 2018.
* ``rfc`` (seed 003, Oct 2017): the code is copied to 0x7c00 and the table is 0x7000, of which only the
  first 8 bytes are written; the 32-bit code's pushes go to the truncated ESP.
* ``merged`` (Debian's 6.1 ``configure_5level_paging``): ``find_trampoline_placement`` from the BIOS data
  area, the EBDA and the e820 map; 8 KiB saved, used (table page + code page, the LJMP immediate patched)
  and restored; the resulting top-level table copied into the decompressor's ``top_pgtable``. Both
  directions: 4→5, and 5→4 for ``no5lvl`` on a 5-level loader.

Every step is an architectural operation of the CPU model (far return, MOV CR0/CR3/CR4, WRMSR EFER, LJMP),
so a step done out of order fails as it would on hardware (#GP, fetch fault). Where the CPU fetches is
checked against where the code really is: fetching anything else is losing control. Differences: the code
bytes are a stand-in (the model executes the instructions in Python), except the LJMP whose immediate the C
code patches, which is real; decompression itself is not modelled.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.hw.faults import Halt
from earlymm.kernel.context import KernelContext
from earlymm.kernel.cpufeature import X86Feature, boot_cpu_has
from earlymm.kernel.events import Note
from earlymm.kernel.trampoline import KERNEL32_CS, find_trampoline_placement, no5lvl

KERNEL_CS = 0x10
SIZE = 0x1_0000  # what the decompressor occupies after the kernel image it extracts
TRAMPOLINE_32BIT_SIZE, TRAMPOLINE_32BIT_CODE_OFFSET, TRAMPOLINE_32BIT_CODE_SIZE = 0x2000, 0x1000, 0xA0
# The model's encoding of trampoline_32bit_src: .Lret at 0x10, the 32-bit part ("0:") at 0x20, the
# final "ljmpl $__KERNEL_CS, $(.Lret - trampoline_32bit_src)" at 0x98 (its immediate at 0x99).
OFF_RET, OFF_CODE32, LJMP_AT = 0x10, 0x20, 0x98
RFC_TRAMPOLINE, RFC_PGTABLE, RFC_CODE_SIZE, RFC_LVL5_ENABLED = 0x7C00, 0x7000, 0x40, 0x30


class Variant(enum.Enum):
    V4_14 = "v4.14"
    RFC = "rfc"
    MERGED = "merged"


@dataclass(frozen=True, slots=True)
class Layout:
    """The decompressor's pieces, at physical (= identity-mapped virtual) addresses."""

    base: int

    @property
    def startup_64(self) -> int:
        return self.base

    @property
    def lvl5(self) -> int:  # v4.14 / rfc: where 64-bit code resumes after the switch
        return self.base + 0x180

    @property
    def compatible_mode(self) -> int:  # v4.14's 32-bit code, inside the image
        return self.base + 0x200

    @property
    def trampoline_src(self) -> int:  # 6.1 trampoline_32bit_src
        return self.base + 0x400

    @property
    def rfc_trampoline_src(self) -> int:  # the RFC's lvl5_trampoline
        return self.base + 0x500

    @property
    def lvl5_pgtable(self) -> int:  # v4.14's new top-level table, inside the image
        return self.base + 0x1000

    @property
    def top_pgtable(self) -> int:  # 6.1: where the resulting top-level table ends up
        return self.base + 0x2000

    @property
    def trampoline_save(self) -> int:  # 6.1: the saved 8 KiB of low memory
        return self.base + 0x3000

    @property
    def boot_stack_end(self) -> int:
        return self.base + 0x8000


def install_decompressor(ctx: KernelContext, lay: Layout) -> None:
    """The bzImage's decompressor as the loader copied it: code bytes (stand-ins, with the real LJMP)."""
    code = bytearray(b"\x90" * TRAMPOLINE_32BIT_CODE_SIZE)
    code[LJMP_AT:LJMP_AT + 7] = b"\xea" + struct.pack("<IH", OFF_RET, KERNEL_CS)
    ctx.platform.mem.write(lay.trampoline_src, bytes(code))
    ctx.platform.mem.write(lay.rfc_trampoline_src, b"\x90" * RFC_CODE_SIZE)
    ctx.platform.mem.write(lay.startup_64, b"\x90" * 0x400)


def _run(ctx: KernelContext, what: str, va: int, code_at: int, code_size: int) -> None:
    """Transfer control to ``va`` (its low 32 bits outside 64-bit mode) and check the CPU fetches the code
    it should: ``code_at`` is where that code physically is."""
    cpu = ctx.cpu
    cpu.jump(va)
    res = cpu.mmu.probe(cpu.regs.rip, 2)
    pa = res.pa if res.ok else None
    if pa is None or not code_at <= pa < code_at + code_size:
        where = f"physical {pa:#x}" if pa is not None else "an unmapped address"
        raise Halt(f"lost control: {what} is at physical {code_at:#x}, but the CPU ({cpu.mode.value} mode) runs at "
                   f"{cpu.regs.rip:#x} and fetches from {where} — "
                   + ("the 32-bit EIP cannot hold an address above 4 GiB" if va >> 32 else "not the code"),
                   outcome="lost_control")


def decompressor_stage(ctx: KernelContext, variant: Variant, lay: Layout) -> None:
    """compressed/head_64.S ``startup_64`` as far as paging goes, then the jump to the extracted kernel."""
    cpu = ctx.cpu
    cpu.regs.rsp = lay.boot_stack_end
    _run(ctx, "the decompressor's startup_64", lay.startup_64, lay.startup_64, 0x400)
    la57_cpu = boot_cpu_has(cpu, X86Feature.LA57) and cpu.cpuid(0)[0] >= 7
    ctx.emit(Note(f"decompressor ({variant.value}) at {lay.base:#x}: CPU LA57 {'yes' if la57_cpu else 'no'}, "
                  f"running {'5' if cpu.regs.cr4 & Cr4.LA57 else '4'}-level"))
    if variant is Variant.MERGED:
        configure_5level_paging(ctx, lay, la57_cpu and not no5lvl(ctx))
    elif la57_cpu and not cpu.regs.cr4 & Cr4.LA57:
        (_v414 if variant is Variant.V4_14 else _rfc)(ctx, lay)
    else:
        ctx.emit(Note("decompressor: 5-level paging already on, or not supported: nothing to switch"))
    # extract_kernel(), then jmp *%rax to the decompressed kernel's startup_64 (physical, identity-mapped)
    _run(ctx, "the kernel's startup_64", ctx.platform.entry.kernel_at, ctx.platform.entry.kernel_at, 0x200)


def configure_5level_paging(ctx: KernelContext, lay: Layout, l5_required: bool) -> None:
    """Debian 6.1 pgtable_64.c ``configure_5level_paging`` (after head_64.S keeps CR4's PAE|MCE|LA57)."""
    cpu = ctx.cpu
    cpu.write_cr4(cpu.regs.cr4 & int(Cr4.PAE | Cr4.MCE | Cr4.LA57))
    if l5_required == bool(cpu.regs.cr4 & Cr4.LA57):
        ctx.emit(Note(f"configure_5level_paging: already {'5' if l5_required else '4'}-level, no trampoline"))
        return
    tramp = find_trampoline_placement(ctx)
    code = tramp + TRAMPOLINE_32BIT_CODE_OFFSET
    cpu.write(lay.trampoline_save, cpu.read(tramp, TRAMPOLINE_32BIT_SIZE))  # preserve trampoline memory
    cpu.write(tramp, bytes(TRAMPOLINE_32BIT_SIZE))
    cpu.write(code, cpu.read(lay.trampoline_src, TRAMPOLINE_32BIT_CODE_SIZE))
    imm = cpu.load(code + LJMP_AT + 1, 4)
    cpu.store(code + LJMP_AT + 1, 4, (imm + code) & 0xFFFF_FFFF)  # the u32 += toggle_la57: a 32-bit address
    cr3 = cpu.regs.cr3 & ~0xFFF  # native_read_cr3_pa()
    if l5_required:
        cpu.store(tramp, 8, cr3 | 0x67)  # _PAGE_TABLE_NOENC: the old PML4 as PML5[0]
    else:
        cpu.write(tramp, cpu.read(cpu.load(cr3, 8) & 0x000F_FFFF_FFFF_F000, 4096))  # PML5[0]'s PML4, copied
    ctx.emit(Note(f"configure_5level_paging: trampoline at {tramp:#x} (8 KiB saved at {lay.trampoline_save:#x}), "
                  f"{'4→5' if l5_required else '5→4'}-level, new top-level table at {tramp:#x}"))
    toggle_la57(ctx, code, tramp, lay.startup_64 + 0x100)
    cpu.write(lay.top_pgtable, cpu.read(tramp, 4096))  # move the table out of trampoline memory
    cpu.write_cr3(lay.top_pgtable)
    cpu.write(tramp, cpu.read(lay.trampoline_save, TRAMPOLINE_32BIT_SIZE))  # restore trampoline memory
    ctx.emit(Note(f"configure_5level_paging: CR3 = top_pgtable at {lay.top_pgtable:#x}; {tramp:#x} restored"))


def toggle_la57(ctx: KernelContext, code: int, table: int, ret: int) -> None:
    """``trampoline_32bit_src(table)``: far return to compatibility mode, paging off, a 32-bit CR3 load,
    EFER.LME, CR4.LA57 toggled, paging on, LJMP (patched immediate) back to 64-bit mode, return."""
    cpu, r = ctx.cpu, ctx.cpu.regs
    r.rsp -= 6 * 8
    cpu.write(r.rsp, bytes(48))  # push %r15 … %rbx (the callee-saved registers)
    hi = r.rsp >> 32  # movq %rsp, %rbx; shrq $32, %rbx
    cpu.far_jump(code + OFF_CODE32, long_mode_code=False, cs=KERNEL32_CS)  # lretq to __KERNEL32_CS:0f
    _run(ctx, "trampoline_32bit_src's 32-bit code", code + OFF_CODE32, code, TRAMPOLINE_32BIT_CODE_SIZE)
    cpu.write_cr0(r.cr0 & ~int(Cr0.PG))
    _run(ctx, "the trampoline, paging off", code + OFF_CODE32 + 8, code, TRAMPOLINE_32BIT_CODE_SIZE)
    cpu.write_cr3(table)  # movl %edi, %cr3
    if not r.efer & Efer.LME:
        cpu.write_efer(r.efer | int(Efer.LME))
    cpu.write_cr4(r.cr4 ^ int(Cr4.LA57))  # btcl $X86_CR4_LA57_BIT
    cpu.write_cr0(r.cr0 | int(Cr0.PG))
    target = cpu.load(code + LJMP_AT + 1, 4)  # ljmpl $__KERNEL_CS, $imm32
    cpu.far_jump(target, long_mode_code=True, cs=KERNEL_CS)
    _run(ctx, "trampoline_32bit_src's .Lret", target, code, TRAMPOLINE_32BIT_CODE_SIZE)
    r.rsp = (hi << 32) | (r.rsp & 0xFFFF_FFFF)
    cpu.read(r.rsp, 48)  # pop the saved registers through the new tables
    r.rsp += 48
    cpu.jump(ret)  # retq


def _v414(ctx: KernelContext, lay: Layout) -> None:
    """v4.14 compressed/head_64.S: ``lvl5_pgtable`` and ``compatible_mode`` inside the decompressor."""
    cpu, r = ctx.cpu, ctx.cpu.regs
    cpu.write(lay.lvl5_pgtable, bytes(4096))
    cpu.store(lay.lvl5_pgtable, 8, (r.cr3 & ~0xFFF) | 0x7)
    ctx.emit(Note(f"v4.14: lvl5_pgtable at {lay.lvl5_pgtable:#x} (in the image), far return to compatible_mode"))
    cpu.far_jump(lay.compatible_mode, long_mode_code=False, cs=KERNEL32_CS)  # lretq: EIP is 32 bits
    _run(ctx, "compatible_mode", lay.compatible_mode, lay.compatible_mode, 0x80)
    cpu.write_cr0(r.cr0 & ~int(Cr0.PG))
    _run(ctx, "compatible_mode, paging off", lay.compatible_mode + 8, lay.compatible_mode, 0x80)
    cpu.write_cr3(lay.lvl5_pgtable & 0xFFFF_FFFF)  # leal lvl5_pgtable(%ebx), %eax; movl %eax, %cr3
    cpu.write_cr4(r.cr4 | int(Cr4.PAE | Cr4.LA57))
    _push_far_and_return(ctx, lay.lvl5 & 0xFFFF_FFFF, lay.lvl5, 0x40, "lvl5")


def _rfc(ctx: KernelContext, lay: Layout) -> None:
    """Seed 003: the trampoline copied to 0x7c00, PML5[0] written at 0x7000 (the rest of that page is
    whatever low memory holds), the return through ``lvl5_enabled`` and ``jmp *%rdi``."""
    cpu, r = ctx.cpu, ctx.cpu.regs
    cpu.write(RFC_TRAMPOLINE, cpu.read(lay.rfc_trampoline_src, RFC_CODE_SIZE))  # rep movsb
    cpu.store(RFC_PGTABLE, 8, (r.cr3 & ~0xFFF) | 0x7)  # movq %rax, LVL5_PGTABLE: 8 bytes, no more
    rdi = lay.lvl5  # leaq lvl5(%rip), %rdi: a 64-bit absolute address
    ctx.emit(Note(f"rfc: trampoline copied to {RFC_TRAMPOLINE:#x}, PML5[0] at {RFC_PGTABLE:#x}, return via {rdi:#x}"))
    cpu.far_jump(RFC_TRAMPOLINE, long_mode_code=False, cs=KERNEL32_CS)
    _run(ctx, "lvl5_trampoline", RFC_TRAMPOLINE, RFC_TRAMPOLINE, RFC_CODE_SIZE)
    cpu.write_cr0(r.cr0 & ~int(Cr0.PG))
    _run(ctx, "lvl5_trampoline, paging off", RFC_TRAMPOLINE + 8, RFC_TRAMPOLINE, RFC_CODE_SIZE)
    cpu.write_cr3(RFC_PGTABLE)
    cpu.write_cr4(r.cr4 | int(Cr4.PAE | Cr4.LA57))
    enabled = RFC_TRAMPOLINE + RFC_LVL5_ENABLED
    _push_far_and_return(ctx, enabled, RFC_TRAMPOLINE, RFC_CODE_SIZE, "lvl5_enabled")
    _run(ctx, "lvl5 (jmp *%rdi)", rdi, lay.lvl5, 0x40)


def _push_far_and_return(ctx: KernelContext, target: int, code_at: int, size: int, what: str) -> None:
    """``pushl $__KERNEL_CS; pushl target; movl $(PG|PE), %cr0; lret`` — the pushes use ESP, the low half
    of the 64-bit stack pointer, so above 4 GiB they land somewhere else in low memory."""
    cpu, r = ctx.cpu, ctx.cpu.regs
    esp = (r.rsp & 0xFFFF_FFFF) - 8
    cpu.store(esp + 4, 4, KERNEL_CS)  # paging is off: linear = physical, 32-bit
    cpu.store(esp, 4, target)
    if r.rsp >> 32:
        ctx.emit(Note(f"the 32-bit pushes went to ESP {esp:#x}, not to the stack at {r.rsp - 8:#x}"))
    cpu.write_cr0(int(Cr0.PG | Cr0.PE))
    back = cpu.load(esp, 4)  # lret pops EIP and CS (through the new 5-level tables)
    cpu.far_jump(back, long_mode_code=True, cs=KERNEL_CS)
    _run(ctx, what, back, code_at, size)
    r.rsp = (r.rsp & ~0xFFFF_FFFF) | ((esp + 8) & 0xFFFF_FFFF)
