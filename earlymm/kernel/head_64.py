"""``startup_64`` and the common tail of ``secondary_startup_64`` (arch/x86/kernel/head_64.S @ v3.9;
``__startup_64`` in head64.c / map_kernel.c for the ``current`` profile). Spec §3.3, §3.9.

This code runs at physical addresses on the loader's identity map (RIP-relative addressing), so every
symbol is reached at ``link address − __START_KERNEL_map + load_delta`` through the MMU.
"""

from __future__ import annotations

from collections.abc import Callable

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.hw.faults import Halt
from earlymm.kernel.consts import (
    __PAGE_KERNEL_LARGE_EXEC,
    _KERNPG_TABLE,
    _PAGE_GLOBAL,
    _PAGE_NX,
    _PAGE_PRESENT,
    KERNEL_CS,
    PMD_SHIFT,
    PMD_SIZE,
    PUD_SHIFT,
    START_KERNEL_MAP,
    THREAD_SIZE,
)
from earlymm.kernel.context import KernelContext, Variant
from earlymm.kernel.events import Note

IDENT_PMD_FLAGS = __PAGE_KERNEL_LARGE_EXEC & ~_PAGE_GLOBAL  # 0x0e3: no G, no NX (spec §2.4)


def startup_64(ctx: KernelContext) -> None:
    """Fix up the static tables for the load address, build the 3-page switchover identity map, switch
    CR3 to ``early_level4_pgt`` and jump to the kernel's high mapping."""
    cpu, lay, prof = ctx.cpu, ctx.layout, ctx.profile
    p = cpu.regs.rip  # physical address of _text: we were entered at startup_64
    load_delta = p - (lay.text - START_KERNEL_MAP)
    def phys(name: str) -> int:  # leaq sym(%rip): the symbol where it was loaded
        return lay[name] - START_KERNEL_MAP + load_delta

    if load_delta & (PMD_SIZE - 1):
        raise Halt(f"bad_address: load address {p:#x} is not 2 MiB aligned (load_delta {load_delta:#x}); "
                   "startup_64 spins in 'jmp bad_address'", outcome="hang")
    if p >> prof.max_physmem_bits:
        raise Halt(f"bad_address: _text at {p:#x} is beyond MAX_PHYSMEM_BITS ({prof.max_physmem_bits}); "
                   "startup_64 spins in 'jmp bad_address'", outcome="hang")

    def addq(addr: int, delta: int) -> None:
        ctx.wr(addr, ctx.rd(addr) + delta)

    addq(phys("early_top_pgt") + 511 * 8, load_delta)
    addq(phys("level3_kernel_pgt") + 510 * 8, load_delta)
    addq(phys("level3_kernel_pgt") + 511 * 8, load_delta)
    for idx in prof.fixmap_pmds:
        addq(phys("level2_fixmap_pgt") + idx * 8, load_delta)

    _identity_map(ctx, p, phys)

    # level2_kernel_pgt: relocate every present entry (6.x first drops those outside _text.._end).
    l2 = phys("level2_kernel_pgt")
    first, last = (lay.text >> PMD_SHIFT) & 511, ((lay.end - 1) >> PMD_SHIFT) & 511
    for i in range(512):
        e = ctx.rd(l2 + 8 * i)
        if prof.trim_kernel_pmds and not first <= i <= last:
            if e & _PAGE_PRESENT:
                ctx.wr(l2 + 8 * i, e & ~_PAGE_PRESENT)
            continue
        if e & _PAGE_PRESENT:
            ctx.wr(l2 + 8 * i, e + load_delta)
    addq(phys("phys_base"), load_delta)
    ctx.emit(Note(f"startup_64: load_delta {load_delta:#x}, phys_base {ctx.rd(phys('phys_base')):#x}"))
    _common_tail(ctx, phys)


def _identity_map(ctx: KernelContext, p: int, phys: Callable[[str], int]) -> None:
    """The switchover identity map: PGD = early_top_pgt, PUD = pool page 0, PMD = pool page 1, each
    upper entry written twice so a kernel straddling a 1 GiB or 512 GiB boundary stays mapped."""
    lay, prof, cfg = ctx.layout, ctx.profile, ctx.config
    pgd = phys("early_top_pgt")
    pool = phys("early_dynamic_pgts")
    if prof.next_early_pgt_initial == 0:
        # 6.x: __startup_64 takes its pages from the pool itself (next_early_pgt 0 → 2).
        nxt = phys("next_early_pgt")
        n = ctx.rd(nxt)
        pud, pmd = pool + 4096 * n, pool + 4096 * (n + 1)
        ctx.wr(nxt, n + 2)
    else:
        pud, pmd = pool, pool + 4096
    rfc = cfg.variant is Variant.RFC
    i = p >> 39
    ctx.wr(pgd + 8 * i, pud + _KERNPG_TABLE)
    ctx.wr(pgd + 8 * (i + 1), pud + _KERNPG_TABLE)
    j = (p >> PUD_SHIFT) & 511
    ctx.wr(pud + 8 * j, pmd + _KERNPG_TABLE)
    # The RFC wrote PUD[j+1] unmasked (a 4 KiB overrun into the next page when j = 511).
    ctx.wr(pud + 8 * (j + 1 if rfc else (j + 1) & 511), pmd + _KERNPG_TABLE)
    flags = IDENT_PMD_FLAGS
    if prof.trim_kernel_pmds:
        flags &= ctx.rd(phys("__supported_pte_mask"))
    if rfc:
        base = p & ~(PMD_SIZE - 1)
        start = (p >> PMD_SHIFT) & 511
        for n in range(512):
            ctx.wr(pmd + 8 * ((start + n) & 511), base + n * PMD_SIZE + flags)
    else:
        end_phys = lay.end - lay.text + p
        count = ((end_phys - 1) >> PMD_SHIFT) - (p >> PMD_SHIFT) + 1
        for n in range(count):
            ctx.wr(pmd + 8 * (((p >> PMD_SHIFT) + n) & 511), (p & ~(PMD_SIZE - 1)) + n * PMD_SIZE + flags)


def _common_tail(ctx: KernelContext, phys: Callable[[str], int]) -> None:
    """secondary_startup_64's tail: CR4, CR3, the jump to the high mapping, EFER/NX, CR0, stack, and the
    far return to x86_64_start_kernel."""
    cpu, lay = ctx.cpu, ctx.layout
    cpu.write_cr4(int(Cr4.PAE | Cr4.PGE))  # unconditional in head_64.S: a CPU without PGE would #GP here
    phys_base = ctx.rd(phys("phys_base"))
    cpu.write_cr3(lay.top_pgt - START_KERNEL_MAP + phys_base)
    cpu.jump(lay["secondary_startup_64"] + 0x40)  # movq $1f, %rax; jmp *%rax: now on the high mapping
    efer = cpu.regs.efer | Efer.SCE
    if cpu.features.nx:
        efer |= Efer.NXE
    cpu.write_efer(int(efer))
    if cpu.features.nx or ctx.config.force_nx:
        ctx.wr(lay["early_pmd_flags"], ctx.rd(lay["early_pmd_flags"]) | _PAGE_NX)
    cpu.write_cr0(int(Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.AM | Cr0.PG))
    cpu.regs.rsp = lay["init_thread_union"] + THREAD_SIZE - 8
    cpu.regs.rflags = 0x2
    cpu.far_jump(lay["x86_64_start_kernel"], long_mode_code=True, cs=KERNEL_CS)
