"""i386 ``paravirt_ops``: the page-table setup hooks of seed 002 and the store wrappers the builders use.

Model of include/asm-i386/paravirt.h and arch/i386/kernel/paravirt.c @ 2.6.21 (commit b239fb25 added
``pagetable_setup_start``/``pagetable_setup_done``). 2.6.21's ``struct paravirt_ops`` is one flat table;
here its MMU and CPU members are ``PvOps.mmu``/``PvOps.cpu`` (kernel/paravirt/ops.py) and the two hooks
extend it as ``I386PvOps.init`` (with ``memory_setup``, the other boot-time member a hypervisor
replaces) (the protocol's docstring reserves that for the paths that have them).
The kernel model never branches on the backend: ``pagetable_init`` calls ``ctx.pv.init.…`` and the
builders call the wrappers below, which go through ``ctx.pv.mmu``.

Name mapping to the shared protocol: 2.6.21's ``alloc_pd``/``alloc_pt`` (a page becomes a pmd / pte
table) are ``PvMmuOps.alloc_pmd``/``alloc_pte``. Folding decides which store op a Linux call reaches:
on 2-level, ``set_pgd`` → ``set_pud`` → ``set_pmd`` (pgtable-nopud.h, pgtable-nopmd.h); with PAE the pud
is folded into the pgd, so ``set_pgd`` reaches ``set_pud`` (a PDPT entry) and ``set_pmd`` stays itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from earlymm.arch.addr import Pfn, VirtAddr
from earlymm.hw.walk import OK
from earlymm.kernel.i386.consts import _PAGE_PRESENT, KERNEL_PGD_PTRS_PAE, PAGE_SHIFT, USER_PTRS_PER_PGD_PAE
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.i386.e820 import machine_specific_memory_setup
from earlymm.kernel.i386.events import EntryStore, PvNotify
from earlymm.kernel.i386.pvops import I386PvOps
from earlymm.kernel.paravirt.native import NativeCpuOps, NativeMmuOps


def peek(ctx: I386Context, va: int, size: int) -> int:
    """An entry's value for a report, read without any effect on the machine (no A bits, no TLB fill);
    0 if ``va`` does not translate. Not kernel code: the kernel's own reads go through ``ctx.rd``."""
    res = ctx.cpu.mmu.probe(va)
    return ctx.platform.mem.read_int(res.pa, size) if res.outcome == OK else 0


def _table_and_index(ctx: I386Context, ptr: int) -> tuple[int, int]:
    size = ctx.pgt.entry_size
    res = ctx.cpu.mmu.probe(ptr)
    pa = res.pa if res.outcome == OK else ctx.pa(ptr)
    return pa & ~0xFFF, (pa & 0xFFF) // size


def _record(ctx: I386Context, op: str, ptr: int, new: int) -> int:
    size = ctx.pgt.entry_size
    old = peek(ctx, ptr, size)
    table, index = _table_and_index(ctx, ptr)
    ctx.emit(EntryStore(ctx.fn, op, table, index, old, new))
    return old


def set_pgd(ctx: I386Context, ptr: int, val: int) -> None:
    """``set_pgd(pgdp, __pgd(val))``: a PDPT entry with PAE (``set_pud``), a PDE without (``set_pmd``)."""
    new = ctx.pv.mmu.make_entry(val)
    _record(ctx, "set_pgd", ptr, new)
    if ctx.pae:
        ctx.pv.mmu.set_pud(VirtAddr(ptr), new)
    else:
        ctx.pv.mmu.set_pmd(VirtAddr(ptr), new)


def set_pmd(ctx: I386Context, ptr: int, val: int) -> None:
    """``set_pmd(pmdp, __pmd(val))``: a PAE PD entry, or (2-level, folded) a PDE."""
    new = ctx.pv.mmu.make_entry(val)
    _record(ctx, "set_pmd", ptr, new)
    ctx.pv.mmu.set_pmd(VirtAddr(ptr), new)


def paravirt_alloc_pd(ctx: I386Context, pfn: int) -> None:
    """``paravirt_alloc_pd(pfn)``: the page at ``pfn`` is becoming a pmd (or, non-PAE, a pgd) table."""
    ctx.emit(PvNotify(ctx.fn, "alloc_pd", pfn))
    ctx.pv.mmu.alloc_pmd(Pfn(pfn))


def paravirt_alloc_pt(ctx: I386Context, pfn: int) -> None:
    """``paravirt_alloc_pt(pfn)``: the page at ``pfn`` is becoming a pte table."""
    ctx.emit(PvNotify(ctx.fn, "alloc_pt", pfn))
    ctx.pv.mmu.alloc_pte(Pfn(pfn))


class NativeInitOps:
    """``machine_specific_memory_setup`` and ``native_pagetable_setup_start``/``_done`` (arch/i386/mm/init.c
    @ 2.6.21 as merged in b239fb25)."""

    name = "native"

    def __init__(self, ctx: I386Context) -> None:
        self.ctx = ctx

    def memory_setup(self) -> str:
        return machine_specific_memory_setup(self.ctx)

    def pagetable_setup_start(self, base: VirtAddr) -> None:
        """Model of native_pagetable_setup_start(), arch/i386/mm/init.c @ 2.6.21; differences: none.

        PAE: pgd entries 0 .. USER_PTRS_PER_PGD-1 become ``__pa(empty_zero_page) | _PAGE_PRESENT`` (P only:
        PDPTE bits 2:1 are reserved, spec §1.3) and the kernel's entry is cleared with ``memset`` (not a pv
        store) so that pagetable_init allocates a fresh pmd. The CPU still runs head.S's non-PAE directory
        in this page: each 8-byte store overwrites two of its PDEs ("clobbering the mappings for the lower
        24Mbytes", the source's comment). Non-PAE: only ``paravirt_alloc_pd`` for swapper_pg_dir."""
        ctx = self.ctx
        with ctx.running("native_pagetable_setup_start"):
            if ctx.pae:
                zero = ctx.pa_symbol("empty_zero_page") | _PAGE_PRESENT
                for i in range(USER_PTRS_PER_PGD_PAE):
                    set_pgd(ctx, base + 8 * i, zero)
                ptr = base + 8 * USER_PTRS_PER_PGD_PAE
                _record(ctx, "memset", ptr, 0)
                ctx.memset(ptr, 0, 8 * KERNEL_PGD_PTRS_PAE)
            else:
                paravirt_alloc_pd(ctx, ctx.pa_symbol("swapper_pg_dir") >> PAGE_SHIFT)

    def pagetable_setup_done(self, base: VirtAddr) -> None:
        """Model of native_pagetable_setup_done(), arch/i386/mm/init.c @ 2.6.21; differences: none.

        PAE: ``set_pgd(&base[0], base[USER_PTRS_PER_PGD])`` — the low identity alias of the first kernel
        GiB that SMP's real-mode AP start-up needs (zap_low_mappings removes it later). Non-PAE: nothing;
        head.S's identity PDEs are still there."""
        ctx = self.ctx
        with ctx.running("native_pagetable_setup_done"):
            if ctx.pae:
                set_pgd(ctx, base, ctx.entry_val(ctx.rd(base + 8 * USER_PTRS_PER_PGD_PAE, 8)))


def native_pv_ops(ctx: I386Context) -> I386PvOps:
    """The native backend: plain stores of ``entry_size`` bytes through the MMU, nop notifications, and
    the native page-table hooks."""
    return I386PvOps(NativeMmuOps(ctx, ctx.pgt.entry_size), NativeCpuOps(ctx), init=NativeInitOps(ctx))


BACKENDS: Mapping[str, Callable[[I386Context], I386PvOps]] = MappingProxyType({"native": native_pv_ops})
