"""The Xen PV backend of ``pv_ops`` (arch/x86/xen/mmu.c ``xen_mmu_ops``, enlighten.c ``xen_cpu_ops`` @ v3.9;
spec §5.3, §5.4): entry values converted pfn ↔ mfn, stores through hypercalls, page-table pages made
read-only and pinned, CR3 as ``MMUEXT_NEW_BASEPTR``, the IDT as Xen's trap table.

Which ``write_cr3`` is installed first is the point of seed 004: the fixed kernel starts with
``xen_write_cr3_init``; the kernel before the fix starts with ``xen_write_cr3``, which reads
``page->private`` of a struct page that does not exist yet. ``post_allocator_init`` is
``xen_post_allocator_init``'s switch to the full ops, traced.
"""

from __future__ import annotations

from array import array

import numpy as np

from earlymm.arch.addr import Pfn, PhysAddr, VirtAddr
from earlymm.hw.delivery import GATE64
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import Note
from earlymm.kernel.paravirt.ops import SetOp
from earlymm.kernel.xen import mmu as xm
from earlymm.kernel.xen.hypercall import BUG, HYPERVISOR_set_trap_table, guest, hv
from earlymm.kernel.xen.p2m import pte_mfn_to_pfn, pte_pfn_to_mfn, ptes_pfn_to_mfn

GATE_INTERRUPT, GATE_TRAP = 0xE, 0xF


class XenMmuOps:
    name = "xen"

    def __init__(self, ctx: KernelContext) -> None:
        self.ctx = ctx
        self.full = False  # xen_post_allocator_init ran

    def _write_cr3_late(self) -> bool:
        return self.full or guest(self.ctx).write_cr3_late

    # control registers and TLB
    def read_cr2(self) -> int:
        return xm.xen_read_cr2(self.ctx)

    def read_cr3(self) -> int:
        return self.ctx.rd(self.ctx.sym("xen_cr3"))

    def write_cr3(self, cr3: PhysAddr) -> None:
        (xm.xen_write_cr3 if self._write_cr3_late() else xm.xen_write_cr3_init)(self.ctx, cr3)

    def flush_tlb_user(self) -> None:
        xm.xen_flush_tlb(self.ctx)

    def flush_tlb_kernel(self) -> None:
        xm.xen_flush_tlb(self.ctx)

    def flush_tlb_one_user(self, addr: VirtAddr) -> None:
        xm.xen_flush_tlb_single(self.ctx, addr)

    # entry stores
    def set_pte(self, ptr: VirtAddr, val: int) -> None:
        (xm.xen_set_pte if self.full else xm.xen_set_pte_init)(self.ctx, ptr, val)

    def set_pmd(self, ptr: VirtAddr, val: int) -> None:
        (xm.xen_set_entry if self.full else xm.xen_set_entry_hyper)(self.ctx, ptr, val)

    def set_pud(self, ptr: VirtAddr, val: int) -> None:
        (xm.xen_set_entry if self.full else xm.xen_set_entry_hyper)(self.ctx, ptr, val)

    def set_p4d(self, ptr: VirtAddr, val: int) -> None:
        self.set_pgd(ptr, val)  # v3.9 has no p4d level: pgd_populate is set_pgd

    def set_pgd(self, ptr: VirtAddr, val: int) -> None:
        (xm.xen_set_pgd if self.full else xm.xen_set_entry_hyper)(self.ctx, ptr, val)

    def set_entries(self, op: SetOp, ptr: VirtAddr, vals: array[int]) -> None:
        if op is SetOp.PTE and (ptr & 0xFFF) + 8 * len(vals) <= 0x1000:
            xm.xen_set_ptes(self.ctx, ptr, np.frombuffer(vals, dtype=np.uint64), init=not self.full)
            return
        setter = {SetOp.PTE: self.set_pte, SetOp.PMD: self.set_pmd, SetOp.PUD: self.set_pud,
                  SetOp.P4D: self.set_p4d, SetOp.PGD: self.set_pgd}[op]
        for i, v in enumerate(vals.tolist()):
            setter(VirtAddr(ptr + 8 * i), int(v))

    # entry values
    def make_entry(self, val: int) -> int:
        return pte_pfn_to_mfn(self.ctx, val)

    def entry_val(self, raw: int) -> int:
        return pte_mfn_to_pfn(self.ctx, raw)

    def make_entries(self, vals: array[int]) -> array[int]:
        return array("Q", ptes_pfn_to_mfn(self.ctx, np.frombuffer(vals, dtype=np.uint64)).tobytes())

    # page-table pages
    def alloc_pte(self, pfn: Pfn) -> None:
        if self.full:
            xm.xen_alloc_ptpage(self.ctx, pfn, xm.PG_LEVEL_4K)
        else:
            xm.xen_alloc_pte_init(self.ctx, pfn)

    def alloc_pmd(self, pfn: Pfn) -> None:
        if self.full:
            xm.xen_alloc_ptpage(self.ctx, pfn, xm.PG_LEVEL_2M)
        else:
            xm.xen_alloc_pmd_init(self.ctx, pfn)

    def alloc_pud(self, pfn: Pfn) -> None:
        self.alloc_pmd(pfn) if not self.full else xm.xen_alloc_ptpage(self.ctx, pfn, xm.PG_LEVEL_1G)

    def alloc_p4d(self, pfn: Pfn) -> None:
        return None  # no p4d level in v3.9

    def release_pte(self, pfn: Pfn) -> None:
        if self.full:
            xm.xen_release_ptpage(self.ctx, pfn, xm.PG_LEVEL_4K)
        else:
            xm.xen_release_pte_init(self.ctx, pfn)

    def release_pmd(self, pfn: Pfn) -> None:
        if self.full:
            xm.xen_release_ptpage(self.ctx, pfn, xm.PG_LEVEL_2M)
        else:
            xm.xen_release_pmd_init(self.ctx, pfn)

    def release_pud(self, pfn: Pfn) -> None:
        self.release_pmd(pfn)

    def release_p4d(self, pfn: Pfn) -> None:
        return None

    def post_allocator_init(self) -> None:
        """``xen_post_allocator_init``'s switch of ``pv_mmu_ops`` to the full operations."""
        self.full = True
        self.ctx.emit(Note("xen_post_allocator_init: pv_mmu_ops.set_pte/pmd/pud/pgd, alloc/release_* and "
                           "write_cr3 = the full Xen ops (xen_write_cr3 reads page->private)"))


class XenCpuOps:
    """``xen_cpu_ops``: CR4 is emulated by Xen for a ring-3 kernel; the IDT becomes the trap table."""

    def __init__(self, ctx: KernelContext) -> None:
        self.ctx = ctx

    def read_cr4(self) -> int:
        return hv(self.ctx).guest_cr4

    def write_cr4(self, cr4: int) -> None:
        hv(self.ctx).guest_cr4 = cr4 & ~(0x80 | 0x10)  # xen_write_cr4: no PGE, no PSE

    def load_idt(self, base: VirtAddr, limit: int) -> None:
        """``xen_load_idt``: every interrupt/trap gate of the table becomes a trap-table entry."""
        guest(self.ctx).idt_desc = (base, limit)
        traps = [t for v in range((limit + 1) // 16) if (t := self._trap(base, v)) is not None]
        if HYPERVISOR_set_trap_table(self.ctx, traps):
            BUG(self.ctx, "arch/x86/xen/enlighten.c", "xen_load_idt: set_trap_table failed")

    def write_idt_entry(self, idt: VirtAddr, vector: int, lo: int, hi: int) -> None:
        """``xen_write_idt_entry``: the store, and a trap-table update if it is the loaded IDT."""
        ctx = self.ctx
        ctx.wr(idt + 16 * vector, lo)
        ctx.wr(idt + 16 * vector + 8, hi)
        desc = guest(ctx).idt_desc
        p = idt + 16 * vector
        if desc is not None and desc[0] <= p and p + 16 <= desc[0] + desc[1] + 1:
            trap = self._trap(idt, vector)
            if trap is not None and HYPERVISOR_set_trap_table(ctx, [trap]):
                BUG(ctx, "arch/x86/xen/enlighten.c", "xen_write_idt_entry: set_trap_table failed")

    def _trap(self, idt: int, vector: int) -> tuple[int, int, int] | None:
        """``cvt_gate_to_trap``: interrupt and trap gates only; ``debug``/``int3`` become their Xen entry
        points."""
        ctx = self.ctx
        lo, hi = ctx.rd(idt + 16 * vector), ctx.rd(idt + 16 * vector + 8)
        present, addr = GATE64.decode(lo, hi)
        if not present or (lo >> 40) & 0xF not in (GATE_INTERRUPT, GATE_TRAP):
            return None
        subst = {ctx.sym("debug"): ctx.sym("xen_debug"), ctx.sym("int3"): ctx.sym("xen_int3")}
        return vector, (lo >> 16) & 0xFFFF, subst.get(addr, addr)
