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
    _PAGE_TABLE,
    KERNEL_CS,
    PMD_SIZE,
    START_KERNEL_MAP,
    THREAD_SIZE,
)
from earlymm.kernel.context import KernelContext, Variant
from earlymm.kernel.cpufeature import X86Feature, boot_cpu_has
from earlymm.kernel.events import Note, PoolAlloc
from earlymm.kernel.native import native_read_cr4, native_tlb_flush_global_cr4, native_write_cr3, native_write_cr4
from earlymm.kernel.pgtable import x86_64

IDENT_PMD_FLAGS = __PAGE_KERNEL_LARGE_EXEC & ~_PAGE_GLOBAL  # 0x0e3: no G, no NX (spec §2.4)


def startup_64(ctx: KernelContext) -> None:
    """Fix up the static tables for the load address, build the 3-page switchover identity map, switch
    CR3 to ``early_level4_pgt`` and jump to the kernel's high mapping."""
    cpu, lay, prof = ctx.cpu, ctx.layout, ctx.profile
    p = cpu.regs.rip  # physical address of _text: we were entered at startup_64
    load_delta = p - (lay.text - START_KERNEL_MAP)
    def phys(name: str) -> int:  # leaq sym(%rip): the symbol where it was loaded
        return lay[name] - START_KERNEL_MAP + load_delta

    la57 = check_la57_support(ctx)
    if load_delta & (PMD_SIZE - 1):
        raise Halt(f"bad_address: load address {p:#x} is not 2 MiB aligned (load_delta {load_delta:#x}); "
                   "startup_64 spins in 'jmp bad_address'", outcome="hang")
    if p >= ctx.maxmem:
        raise Halt(f"bad_address: _text at {p:#x} is beyond MAX_PHYSMEM_BITS ({ctx.maxmem.bit_length() - 1}); "
                   "startup_64 spins in 'jmp bad_address'", outcome="hang")

    def addq(addr: int, delta: int) -> None:
        ctx.wr(addr, ctx.rd(addr) + delta)

    g = ctx.pgt
    top_511 = phys("early_top_pgt") + g.entry_size * g.pgd_index(START_KERNEL_MAP)
    if prof.la57:
        # __startup_64 assigns the entry: level4_kernel_pgt when 5-level, else level3_kernel_pgt
        ctx.wr(top_511, lay.link_phys("level4_kernel_pgt" if la57 else "level3_kernel_pgt") + _PAGE_TABLE + load_delta)
        if la57:
            addq(phys("level4_kernel_pgt") + g.entry_size * (g.ptrs_per_p4d - 1), load_delta)
    else:
        addq(top_511, load_delta)  # head_64.S: the static entry, fixed up
    addq(phys("level3_kernel_pgt") + g.entry_size * (g.ptrs_per_pud - 2), load_delta)
    addq(phys("level3_kernel_pgt") + g.entry_size * (g.ptrs_per_pud - 1), load_delta)
    for idx in prof.fixmap_pmds:
        addq(phys("level2_fixmap_pgt") + g.entry_size * idx, load_delta)

    _identity_map(ctx, p, phys)

    # level2_kernel_pgt: relocate every present entry (6.x first drops those outside _text.._end; its loop
    # runs 'i <= pmd_index(_end)', one PMD past a 2 MiB-aligned _end — head64.c @ v6.1:304).
    g = ctx.pgt
    l2 = phys("level2_kernel_pgt")
    first, last = g.pmd_index(lay.text), g.pmd_index(lay.end)
    for i in range(g.ptrs_per_pmd):
        e = ctx.rd(l2 + g.entry_size * i)
        if prof.trim_kernel_pmds and not first <= i <= last:
            if e & _PAGE_PRESENT:
                ctx.wr(l2 + g.entry_size * i, e & ~_PAGE_PRESENT)
            continue
        if e & _PAGE_PRESENT:
            ctx.wr(l2 + g.entry_size * i, e + load_delta)
    addq(phys("phys_base"), load_delta)
    ctx.emit(Note(f"{prof.startup_fn}: load_delta {load_delta:#x}, phys_base {ctx.rd(phys('phys_base')):#x}"))
    _common_tail(ctx, phys)


def check_la57_support(ctx: KernelContext) -> bool:
    """6.1 ``check_la57_support``: 5-level paging is decided by the decompressor; if CR4.LA57 is set, switch
    the kernel's run-time geometry (``__pgtable_l5_enabled``, ``pgdir_shift`` 48, ``ptrs_per_p4d`` 512) and
    ``page_offset_base``; MAX_PHYSMEM_BITS becomes 52 (spec §2.3, §3.9)."""
    if not (ctx.profile.la57 and native_read_cr4(ctx.cpu) & Cr4.LA57):
        return False
    ctx.pgt = x86_64(l5=True, physical_mask_shift=ctx.profile.physical_mask_shift)
    ctx.page_offset, ctx.maxmem = ctx.profile.page_offset_l5, 1 << 52
    ctx.emit(Note(f"check_la57_support: CR4.LA57 is set — 5-level paging, page_offset_base {ctx.page_offset:#x}"))
    return True


def _identity_map(ctx: KernelContext, p: int, phys: Callable[[str], int]) -> None:
    """The switchover identity map: PGD = early_top_pgt, PUD = pool page 0, PMD = pool page 1 (P4D = pool
    page 2 in 5-level mode), each
    upper entry written twice so a kernel straddling a 1 GiB or 512 GiB boundary stays mapped. The
    stores are head_64.S's own ``movq``s (6.1: ``pgd[i] = …`` in C): no pv_ops this early."""
    lay, prof, cfg, g = ctx.layout, ctx.profile, ctx.config, ctx.pgt
    pgd = phys("early_top_pgt")
    pool = phys("early_dynamic_pgts")
    l5 = g.pgtable_l5_enabled
    if prof.next_early_pgt_initial == 0:
        # 6.x: __startup_64 takes its pages from the pool itself (next_early_pgt 0 → 2, or 3 with a p4d).
        nxt = phys("next_early_pgt")
        n = ctx.rd(nxt, 4)
        ctx.wr(nxt, n + 2 + l5, 4)
    else:
        n = 0  # v3.9: head_64.S uses early_dynamic_pgts[0] and [1]; next_early_pgt starts at 2
    # head64.c @ 6.1 takes the pud, then the pmd, and only then (la57) the p4d from the pool
    pages = [pool + 4096 * (n + k) for k in range(2 + l5)]
    for k, (level, page) in enumerate(zip(("pud", "pmd", "p4d"), pages, strict=False)):
        ctx.emit(PoolAlloc(n + k, level, p, page))
    pud, pmd = pages[0], pages[1]
    rfc = cfg.variant is Variant.RFC
    w = g.entry_size
    # v3.9 shifts without a mask (shrq $PGDIR_SHIFT), 6.1 takes it modulo PTRS_PER_PGD: the same index,
    # because startup_64 refused a kernel above MAX_PHYSMEM_BITS. i + 1 is not wrapped in either.
    i = g.pgd_index(p)
    below = pages[2] if l5 else pud  # what the pgd entries point at: the p4d page in 5-level mode
    ctx.wr(pgd + w * i, below + _KERNPG_TABLE)
    ctx.wr(pgd + w * (i + 1), below + _KERNPG_TABLE)
    if l5:
        k = g.p4d_index(p)  # p4d[(physaddr >> P4D_SHIFT) % PTRS_PER_P4D] and the next
        ctx.wr(below + w * k, pud + _KERNPG_TABLE)
        ctx.wr(below + w * ((k + 1) % g.ptrs_per_p4d), pud + _KERNPG_TABLE)
    j = g.pud_index(p)
    ctx.wr(pud + w * j, pmd + _KERNPG_TABLE)
    # The RFC wrote PUD[j+1] unmasked (a 4 KiB overrun into the next page when j = 511).
    ctx.wr(pud + w * (j + 1 if rfc else (j + 1) % g.ptrs_per_pud), pmd + _KERNPG_TABLE)
    flags = IDENT_PMD_FLAGS
    if prof.trim_kernel_pmds:
        flags &= ctx.rd(phys("__supported_pte_mask"))
    base, first = p & ~(g.pmd_size - 1), g.pmd_index(p)
    if rfc:
        count = g.ptrs_per_pmd
    else:
        end_phys = lay.end - lay.text + p
        count = ((end_phys - 1) >> g.pmd_shift) - (p >> g.pmd_shift) + 1
    for n in range(count):
        ctx.wr(pmd + w * ((first + n) % g.ptrs_per_pmd), base + n * g.pmd_size + flags)


def _common_tail(ctx: KernelContext, phys: Callable[[str], int]) -> None:
    """secondary_startup_64's tail: CR4, CR3, the jump to the high mapping, EFER/NX, CR0, stack, and the
    far return to x86_64_start_kernel."""
    cpu, lay = ctx.cpu, ctx.layout
    cr4 = Cr4.PAE | Cr4.PGE  # unconditional in head_64.S: no PGE would #GP here
    if ctx.pgt.pgtable_l5_enabled:
        cr4 |= Cr4.LA57  # 6.1: "testl $1, __pgtable_l5_enabled(%rip); orl $X86_CR4_LA57, %ecx"
    native_write_cr4(cpu, int(cr4))
    phys_base = ctx.rd(phys("phys_base"))
    native_write_cr3(cpu, lay.top_pgt - START_KERNEL_MAP + phys_base)  # movq %rax, %cr3
    if ctx.profile.flush_global_after_cr3:
        native_tlb_flush_global_cr4(cpu)  # "a global TLB flush after the CR3 switch" (xorq $X86_CR4_PGE)
    cpu.jump(lay["secondary_startup_64"] + 0x40)  # movq $1f, %rax; jmp *%rax: now on the high mapping
    efer = cpu.regs.efer | Efer.SCE
    has_nx = boot_cpu_has(cpu, X86Feature.NX)  # cpuid 0x80000001, EDX bit 20
    if has_nx:
        efer |= Efer.NXE
    cpu.write_efer(int(efer))
    if has_nx or ctx.config.force_nx:
        ctx.wr(lay["early_pmd_flags"], ctx.rd(lay["early_pmd_flags"]) | _PAGE_NX)
    cpu.write_cr0(int(Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.AM | Cr0.PG))
    cpu.regs.rsp = lay["init_thread_union"] + THREAD_SIZE - 8
    cpu.regs.rflags = 0x2
    cpu.far_jump(lay["x86_64_start_kernel"], long_mode_code=True, cs=KERNEL_CS)
