"""The early #PF path: ``early_idt_handler`` (head_64.S) → ``early_make_pgtable`` (head64.c), and the
pool of ``early_dynamic_pgts`` with ``reset_early_page_tables`` (spec §3.5–§3.7).

The handler reaches pool pages through the kernel high mapping (``__START_KERNEL_map − phys_base``),
which ``level2_kernel_pgt`` always maps; the ``page-offset`` what-if uses ``__va`` instead and so faults
inside the handler, recursing until ``early_recursion_flag`` stops it — as seed 001 warns.
"""

from __future__ import annotations

from earlymm.arch.addr import PhysAddr, VirtAddr
from earlymm.hw.cpu import ExceptionFrame
from earlymm.hw.delivery import GATE64, Handler
from earlymm.hw.faults import ERRCODE_VECTORS, PF_VECTOR, Halt
from earlymm.kernel.consts import (
    __PAGE_KERNEL_LARGE,
    _KERNPG_TABLE,
    _PAGE_GLOBAL,
    KERNEL_CS,
    START_KERNEL_MAP,
)
from earlymm.kernel.context import KernelContext, PoolAccess, Variant
from earlymm.kernel.events import EarlyMapping, HandlerOutcome, PoolAlloc, PoolReset
from earlymm.kernel.native import native_flush_tlb, native_read_cr2
from earlymm.kernel.pgtable import PgLevel, pgd_offset_pgd


def reset_early_page_tables(ctx: KernelContext) -> None:
    """Model of ``reset_early_page_tables()`` (arch/x86/kernel/head64.c @ v3.9; 6.1 the same): zero
    ``early_level4_pgt[0..510]``, empty the pool, reload CR3 (spec §3.5)."""
    top = ctx.layout.top_pgt
    ctx.memset(top, 0, (ctx.pgt.ptrs_per_pgd - 1) * ctx.pgt.entry_size)
    used = ctx.rd(ctx.sym("next_early_pgt"), 4)
    ctx.wr(ctx.sym("next_early_pgt"), 0, 4)
    ctx.emit(PoolReset(ctx.stats.pool_resets + 1, used))
    if ctx.config.variant is Variant.RFC:
        native_flush_tlb(ctx.cpu)  # the RFC's __native_flush_tlb(): reload CR3
    else:
        ctx.pv.mmu.write_cr3(PhysAddr(ctx.pa_symbol("early_top_pgt")))  # write_cr3(): the pv wrapper
    if ctx.observer is not None:
        ctx.observer.after_reset(ctx)


def _pool_va(ctx: KernelContext, entry_or_phys: int) -> int:
    """Where the handler reaches a pool page whose physical address is in an entry (or given)."""
    phys = entry_or_phys & ctx.pgt.pte_pfn_mask
    if ctx.config.pool_access is PoolAccess.PAGE_OFFSET:
        return ctx.va(phys)
    return phys + START_KERNEL_MAP - ctx.phys_base


def _alloc(ctx: KernelContext, level: str, address: int) -> int | None:
    """Take ``early_dynamic_pgts[next_early_pgt++]``; None if the pool is full (caller resets)."""
    nxt = ctx.sym("next_early_pgt")
    n = ctx.rd(nxt, 4)
    if n >= ctx.config.pool_pages:
        return None
    ctx.wr(nxt, n + 1, 4)
    page_va = ctx.sym("early_dynamic_pgts") + 4096 * n
    ctx.emit(PoolAlloc(n, level, address, page_va - START_KERNEL_MAP + ctx.phys_base))
    return page_va


def _table_below(ctx: KernelContext, entry_p: int, level: str, address: int) -> int | None:
    """One level of ``__early_make_pgtable``: the table ``*entry_p`` points at, or a fresh pool page,
    zeroed and linked with ``_KERNPG_TABLE``; None when the pool is full (the caller resets, restarts).
    The entry is stored directly (``*pgd_p = …`` in head64.c): no pv_ops call this early."""
    entry = ctx.rd(entry_p)
    if entry:
        return _pool_va(ctx, entry)
    page = _alloc(ctx, level, address)
    if page is None:
        return None
    phys = page - START_KERNEL_MAP + ctx.phys_base
    table = _pool_va(ctx, phys)
    ctx.memset(table, 0, 4096)
    ctx.wr(entry_p, phys + _KERNPG_TABLE)
    return table


def early_make_pgtable(ctx: KernelContext, address: int) -> int:
    """Model of ``early_make_pgtable()`` (arch/x86/kernel/head64.c @ v3.9; 6.1 ``__early_make_pgtable``,
    whose p4d level exists only when ``pgtable_l5_enabled``, else the pgd entry doubles as it). Returns 0
    when it created a mapping, -1 when it declines (spec §3.6)."""
    if ctx.config.variant is Variant.RFC:
        return early_make_pgtable_rfc(ctx, address)
    g = ctx.pgt
    physaddr = (address - ctx.page_offset) & ((1 << 64) - 1)
    # read_cr3() (v3.9) / read_cr3_pa() (6.1): both the pv wrapper
    if physaddr >= ctx.maxmem or ctx.pv.mmu.read_cr3() & g.pte_pfn_mask != ctx.pa_symbol("early_top_pgt"):
        return -1
    pmd = (physaddr & ~(g.pmd_size - 1)) + ctx.rd(ctx.sym("early_pmd_flags"))
    while True:  # "again:" — restarted after a reset
        pgd_p = pgd_offset_pgd(g, ctx.layout.top_pgt, address)
        if g.folded(PgLevel.P4D):
            p4d_p: int | None = pgd_p
        else:
            p4d_page = _table_below(ctx, pgd_p, "p4d", address)
            p4d_p = None if p4d_page is None else p4d_page + g.entry_size * g.p4d_index(address)
        pud_page = None if p4d_p is None else _table_below(ctx, p4d_p, "pud", address)
        pmd_page = None if pud_page is None else \
            _table_below(ctx, pud_page + g.entry_size * g.pud_index(address), "pmd", address)
        if pmd_page is None:
            reset_early_page_tables(ctx)
            continue
        ctx.wr(pmd_page + g.entry_size * g.pmd_index(address), pmd)  # pmd_p[pmd_index(address)] = pmd
        ctx.emit(EarlyMapping(address, pmd, 1))
        if ctx.observer is not None:
            ctx.observer.after_mapping(ctx, address)
        return 0


def early_make_pgtable_rfc(ctx: KernelContext, address: int) -> int:
    """Seed 001's patch as posted: no phys_base, a whole PMD page per fault, reset at 63, no CR3 test."""
    n_pool = ctx.config.pool_pages
    physaddr = (address - ctx.page_offset) & ((1 << 64) - 1)
    if physaddr >= ctx.maxmem:
        return -1
    nxt = ctx.sym("next_early_pgt")
    g = ctx.pgt
    pgd_p = pgd_offset_pgd(g, ctx.layout.top_pgt, address)
    pgd = ctx.rd(pgd_p)
    if pgd and ctx.rd(nxt, 4) < n_pool:
        pud_p = (pgd & g.pte_pfn_mask) + START_KERNEL_MAP
    else:
        if ctx.rd(nxt, 4) >= n_pool - 1:
            reset_early_page_tables(ctx)
        page = _alloc(ctx, "pud", address)
        assert page is not None
        pud_p = page
        ctx.memset(pud_p, 0, 4096)
        ctx.wr(pgd_p, pud_p - START_KERNEL_MAP + _KERNPG_TABLE)
    pud_p += g.entry_size * g.pud_index(address)
    pmd_p = _alloc(ctx, "pmd", address)
    if pmd_p is None:  # next_early_pgt == EARLY_DYNAMIC_PAGE_TABLES: the RFC indexes past the pool
        pmd_p = ctx.sym("early_dynamic_pgts") + 4096 * ctx.rd(nxt, 4)
        ctx.wr(nxt, ctx.rd(nxt, 4) + 1, 4)
    pmd = (physaddr & ~(g.pud_size - 1)) + (__PAGE_KERNEL_LARGE & ~_PAGE_GLOBAL)
    ctx.cpu.write(pmd_p, b"".join(((pmd + i * g.pmd_size) & ((1 << 64) - 1)).to_bytes(8, "little")
                                  for i in range(g.ptrs_per_pmd)))
    ctx.wr(pud_p, pmd_p - START_KERNEL_MAP + _KERNPG_TABLE)
    ctx.emit(EarlyMapping(address, pmd, g.ptrs_per_pmd))
    if ctx.observer is not None:
        ctx.observer.after_mapping(ctx, address)
    return 0


def early_fixup_exception(ctx: KernelContext, frame: ExceptionFrame) -> bool:
    """``early_fixup_exception()`` (arch/x86/mm/extable.c): the model's kernel has no exception-table
    entries for the code that runs this early, so nothing is ever fixed up."""
    return False


def install_early_idt(ctx: KernelContext) -> None:
    """Gates for vectors 0..31 → ``early_idt_handlers[i]``, then ``load_idt`` (spec §3.4 step 4)."""
    cpu, lay = ctx.cpu, ctx.layout
    base = lay["idt_table"]
    for vec in range(32):
        stub = lay["early_idt_handlers"] + ctx.profile.idt_stub_size * vec
        write_gate(ctx, base, vec, stub)
        cpu.register_code(stub, f"{ctx.profile.idt_handlers}[{vec}]", _stub(ctx, vec))
    cpu.lidt(base, 256 * 16 - 1)


def _stub(ctx: KernelContext, vector: int) -> Handler:
    def stub(frame: ExceptionFrame) -> None:
        early_idt_handler(ctx, frame, vector)
    return stub


def write_gate(ctx: KernelContext, idt: int, vec: int, target: int) -> None:
    """A 64-bit interrupt gate (type 0xE, P=1, DPL 0) to ``target`` in ``__KERNEL_CS``."""
    lo, hi = GATE64.encode(target, KERNEL_CS)
    ctx.pv.cpu.write_idt_entry(VirtAddr(idt), vec, lo, hi)  # write_idt_entry: a pv op


def early_idt_handler(ctx: KernelContext, frame: ExceptionFrame, vector: int) -> None:
    """``early_idt_handlers[i]`` + ``early_idt_handler`` (head_64.S @ v3.9, spec §3.7), or 6.1's
    ``early_idt_handler_array[i]`` + ``early_idt_handler_common`` → ``do_early_exception``.

    v3.9 halts on entry when ``early_recursion_flag`` is already 2. 6.1 increments the flag first and
    always tries ``early_make_pgtable`` for a #PF; only a fault nothing handled checks the depth
    (``early_fixup_exception``: flag > 2 → ``halt_loop``), so a handler that faults in its own page-table
    accesses recurses without bound in 6.1 — the model's nesting guard then ends the run."""
    cpu = ctx.cpu
    regs, lay, prof = cpu.regs, ctx.layout, ctx.profile
    if vector not in ERRCODE_VECTORS:
        regs.rsp -= 8
        ctx.wr(regs.rsp, 0)
    regs.rsp -= 8
    ctx.wr(regs.rsp, vector)
    flag_va = lay["early_recursion_flag"]
    flag = ctx.rd(flag_va, 4)
    if prof.recursion_check_first and flag >= prof.recursion_halt:
        _halt(ctx, vector, flag)
    ctx.wr(flag_va, flag + 1, 4)
    saved = regs.rsp
    regs.rsp -= 72  # rax, rcx, rdx, rsi, rdi, r8-r11
    cpu.write(regs.rsp, bytes(72))
    handled = False
    if vector == PF_VECTOR:
        # v3.9's GET_CR2_INTO is the pv read_cr2 under CONFIG_PARAVIRT; 6.1's do_early_exception calls
        # native_read_cr2() on purpose.
        cr2 = native_read_cr2(cpu) if prof.early_cr2_native else ctx.pv.mmu.read_cr2()
        if early_make_pgtable(ctx, cr2) == 0:
            handled = True
            ctx.emit(HandlerOutcome(vector, cr2, "mapped"))
    if not handled and not prof.recursion_check_first and ctx.rd(flag_va, 4) >= prof.recursion_halt:
        _halt(ctx, vector, ctx.rd(flag_va, 4))  # early_fixup_exception: early_recursion_flag > 2
    if not handled and early_fixup_exception(ctx, frame):
        handled = True
        ctx.emit(HandlerOutcome(vector, regs.cr2, "fixup"))
    if not handled:
        msg = prof.panic_format.format(vector=vector, cs=frame.cs, rip=frame.rip, error=frame.error_code,
                                       cr2=regs.cr2)
        ctx.print(msg)
        ctx.emit(HandlerOutcome(vector, regs.cr2, "panic"))
        raise Halt(msg, outcome="panic", console="\n".join(ctx.console))
    regs.rsp = saved
    ctx.wr(flag_va, ctx.rd(flag_va, 4) - 1, 4)
    regs.rsp += 16 if vector not in ERRCODE_VECTORS else 8


def _halt(ctx: KernelContext, vector: int, flag: int) -> None:
    ctx.emit(HandlerOutcome(vector, ctx.cpu.regs.cr2, "halt"))
    where = ("early exception handler entered a third time" if ctx.profile.recursion_check_first
             else "early_fixup_exception: nested early exceptions")
    raise Halt(f"{where} (early_recursion_flag={flag}): vector {vector}, cr2 {ctx.cpu.regs.cr2:#x} — hlt loop",
               outcome="halt", console="\n".join(ctx.console))
