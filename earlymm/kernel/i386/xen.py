"""The Xen backend of the i386 path: the 2.6.23 Xen guest's page-table hooks and MMU operations on the
2.6.21 page-table builders (spec §5.6, §5.1).

Model of arch/i386/xen/enlighten.c (``xen_start_kernel``, ``xen_pagetable_setup_start``/``_done``,
``xen_set_pte_init``/``mask_rw_pte``, ``xen_alloc_pt_init``, ``xen_write_cr3``, ``xen_memory_setup``)
and arch/i386/xen/mmu.c (``xen_set_pte``/``xen_set_pmd``/``xen_set_pud`` as one-entry ``mmu_update``
hypercalls, ``xen_make_pte``/``xen_pte_val``, ``make_lowmem_page_readonly``, ``set_pte_mfn``) @ 2.6.23,
the first kernel with the i386 Xen guest; b239fb25's hooks were made for it.

What the hooks do: start copies the hypervisor's top level into ``swapper_pg_dir`` (PAE: into fresh pmd
pages, copies of Xen's, made read-only — Xen will not let an L2 serve two L3s), makes ``empty_zero_page``
and ``swapper_pg_dir`` read-only and switches CR3 to it, and installs ``xen_set_pte_init``, which never
turns an existing read-only mapping writable. The builders then find the hypervisor's pmd and pte pages
present and keep them: every table shares the kernel's PTE pages. Done maps ``shared_info`` at
FIX_PARAVIRT_BOOTMAP and pins the table with MMUEXT_PIN_L3_TABLE — in both modes, as 2.6.23 wrote it; a
2-level Xen ignores the pin of a level it lacks.

Differences: ``xen_vcpu_setup``, features, the GDT and traps are not modelled; ``xen_arch_setup``'s copy of
the command line is made in ``xen_start_kernel``; the model's Xen offers no NX to the guest (whether Xen
3.1 exposed NX to 32-bit PAE PV guests is UNCONFIRMED), so no entry carries NX.
"""

from __future__ import annotations

import dataclasses
from array import array

import numpy as np

from earlymm.arch.addr import Pfn, PhysAddr, VirtAddr
from earlymm.hw.faults import Halt
from earlymm.kernel.events import Note
from earlymm.kernel.i386.consts import _PAGE_PRESENT, _PAGE_RW, COMMAND_LINE_SIZE, PAGE_SHIFT, PAGE_SIZE, U32
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.i386.events import EntryStore, TablePage
from earlymm.kernel.i386.paravirt import peek, set_pgd
from earlymm.kernel.i386.pvops import I386PvOps
from earlymm.kernel.paravirt.ops import NopTableNotices, SetOp
from earlymm.kernel.pgtable import pmd_offset, pte_offset_kernel, pud_offset
from earlymm.platform import bootparams as bp
from earlymm.platform.xen.consts import MMU_NORMAL_PT_UPDATE, MmuExt
from earlymm.platform.xen.domain32 import SI32, Xen32PvPlatform
from earlymm.platform.xen.x86_32 import Xen32

PAGE_KERNEL_XEN = 0x063  # __PAGE_KERNEL without _PAGE_GLOBAL (Xen hides PGE)


def hv(ctx: I386Context) -> Xen32:
    p = ctx.platform
    assert isinstance(p, Xen32PvPlatform), "the Xen backend needs a Xen domain"
    return p.xen


def BUG(ctx: I386Context, where: str, what: str) -> None:
    ctx.print(f"kernel BUG at {where}: {what}")
    raise Halt(f"kernel BUG: {what}", outcome="oops", console="\n".join(ctx.console))


@dataclasses.dataclass
class XenStartInfo:
    """What ``xen_start_kernel`` keeps of ``start_info`` (virtual addresses, a machine address)."""

    va: int = 0
    nr_pages: int = 0
    shared_info: int = 0
    pt_base: int = 0
    nr_pt_frames: int = 0
    mfn_list: int = 0
    xen_cr3: int = 0  # the per-cpu xen_cr3: what CR3 holds, pseudo-physical
    init_mm_pgd: int = 0  # init_mm.pgd: Xen's table first, swapper_pg_dir from the start hook on


class XenI386:
    """The guest's Xen state and the ops built on it; ``pv_mmu``'s ``set_pte`` starts as ``xen_set_pte_init``
    (``init``) once the start hook installs it."""

    def __init__(self, ctx: I386Context) -> None:
        self.ctx = ctx
        self.si = XenStartInfo()
        self.set_pte_init = False

    # -- p2m / m2p (include/asm-i386/xen/page.h @ 2.6.23) --------------------------------------------------
    def pfn_to_mfn(self, pfn: int) -> int:
        """``phys_to_machine_mapping[pfn]``: the guest's p2m list, read through the MMU (no bounds check)."""
        return self.ctx.rd(self.si.mfn_list + 4 * pfn, 4)

    def mfn_to_pfn(self, mfn: int) -> int:
        """``machine_to_phys_mapping[mfn]``: Xen's read-only m2p at MACH2PHYS_VIRT_START."""
        return self.ctx.rd(hv(self.ctx).build.hypervisor_virt_start + 4 * mfn, 4)

    def make_entry(self, val: int) -> int:
        """``xen_make_pte``/``make_pmd``/``make_pgd``: a present entry's pfn becomes its mfn (offset bits kept)."""
        if not val & _PAGE_PRESENT:
            return val
        return (self.pfn_to_mfn(val >> PAGE_SHIFT) << PAGE_SHIFT) | (val & 0xFFF)

    def entry_val(self, raw: int) -> int:
        """``xen_pte_val``/``pmd_val``/``pgd_val``: mfn back to pfn (PAE: of any non-zero entry, with P set)."""
        if self.ctx.pae:
            return (self.mfn_to_pfn(raw >> PAGE_SHIFT) << PAGE_SHIFT | (raw & 0xFFF) | 1) if raw & U32 else 0
        return (self.mfn_to_pfn(raw >> PAGE_SHIFT) << PAGE_SHIFT | (raw & 0xFFF)) if raw & _PAGE_PRESENT else raw

    def virt_to_machine(self, va: int) -> int:
        """``virt_to_machine``: ``__pa`` through the p2m."""
        pa = self.ctx.pa(va)
        return (self.pfn_to_mfn(pa >> PAGE_SHIFT) << PAGE_SHIFT) | (va & 0xFFF)

    # -- hypercalls ---------------------------------------------------------------------------------------
    def mmu_update(self, ptr: int, val: int, what: str) -> None:
        rc, _done = hv(self.ctx).mmu_update([(self.virt_to_machine(ptr) | MMU_NORMAL_PT_UPDATE, val)])
        if rc < 0:
            BUG(self.ctx, "arch/i386/xen/mmu.c", f"{what}: mmu_update of {ptr:#x} to {val:#x} refused ({rc})")

    def mmuext(self, cmd: MmuExt, arg: int, what: str) -> None:
        if hv(self.ctx).mmuext_op([(cmd, arg)]):
            BUG(self.ctx, "arch/i386/xen/enlighten.c", f"{what}: {cmd.name} {arg:#x} refused")

    def lookup_address(self, va: int) -> int:
        """``lookup_address``: the kernel virtual address of the pte that maps ``va`` in ``init_mm.pgd``
        (``pgd_offset_k``; Xen gives no PSE)."""
        ctx, g = self.ctx, self.ctx.pgt
        pgd = self.si.init_mm_pgd + g.entry_size * g.pgd_index(va)
        return pte_offset_kernel(ctx, pmd_offset(ctx, pud_offset(ctx, pgd, va), va), va)

    def make_lowmem_page_readonly(self, va: int) -> None:
        """``make_lowmem_page_readonly``: ``update_va_mapping`` with the pte's RW cleared."""
        ctx = self.ctx
        pte = self.lookup_address(va)
        ptev = ctx.rd(pte, ctx.pgt.entry_size) & ~_PAGE_RW
        ctx.emit(EntryStore(ctx.fn, "update_va_mapping", *self._where(pte), peek(ctx, pte, ctx.pgt.entry_size), ptev))
        if hv(ctx).update_va_mapping(va, ptev, 0):
            BUG(ctx, "arch/i386/xen/mmu.c", f"make_lowmem_page_readonly({va:#x})")

    def _where(self, ptr: int) -> tuple[int, int]:
        res = self.ctx.cpu.mmu.probe(ptr)
        return (res.pa & ~0xFFF, (res.pa & 0xFFF) // self.ctx.pgt.entry_size) if res.ok else (0, 0)


class XenI386MmuOps(NopTableNotices):  # .alloc_pd & co. = paravirt_nop in 2.6.23's xen_paravirt_ops
    """``paravirt_ops``' MMU members under Xen (2.6.23 ``xen_paravirt_ops``)."""

    name = "xen"

    def __init__(self, x: XenI386) -> None:
        self.x, self.ctx = x, x.ctx

    def read_cr2(self) -> int:
        return self.ctx.cpu.regs.cr2

    def read_cr3(self) -> int:
        return self.x.si.xen_cr3

    def write_cr3(self, cr3: PhysAddr) -> None:
        """``xen_write_cr3``: the same CR3 is a TLB flush; else ``xen_cr3`` and MMUEXT_NEW_BASEPTR."""
        x = self.x
        if cr3 == x.si.xen_cr3:
            self.flush_tlb_user()
            return
        x.si.xen_cr3 = cr3
        x.mmuext(MmuExt.NEW_BASEPTR, x.pfn_to_mfn(cr3 >> PAGE_SHIFT), "xen_write_cr3")

    def flush_tlb_user(self) -> None:
        self.x.mmuext(MmuExt.TLB_FLUSH_LOCAL, 0, "xen_flush_tlb")

    def flush_tlb_kernel(self) -> None:
        self.flush_tlb_user()

    def flush_tlb_one_user(self, addr: VirtAddr) -> None:
        self.x.mmuext(MmuExt.INVLPG_LOCAL, addr & ~0xFFF, "xen_flush_tlb_single")

    def mask_rw_pte(self, ptep: int, pte: int) -> int:
        """``mask_rw_pte``: an existing present pte's missing RW stays missing."""
        old = self.ctx.rd(ptep, self.ctx.pgt.entry_size)
        return pte & ((old & _PAGE_RW) | ~_PAGE_RW) if old & _PAGE_PRESENT else pte

    def set_pte(self, ptr: VirtAddr, val: int) -> None:
        """``xen_set_pte_init`` (until the done hook) or ``xen_set_pte``: one ``mmu_update``."""
        if self.x.set_pte_init:
            val = self.mask_rw_pte(ptr, val)
        self.x.mmu_update(ptr, val, "xen_set_pte_init" if self.x.set_pte_init else "xen_set_pte")

    def set_pmd(self, ptr: VirtAddr, val: int) -> None:
        self.x.mmu_update(ptr, val, "xen_set_pmd")

    def set_pud(self, ptr: VirtAddr, val: int) -> None:
        self.x.mmu_update(ptr, val, "xen_set_pud")

    def set_p4d(self, ptr: VirtAddr, val: int) -> None:
        self.set_pud(ptr, val)

    def set_pgd(self, ptr: VirtAddr, val: int) -> None:
        self.set_pud(ptr, val)

    def set_entries(self, op: SetOp, ptr: VirtAddr, run: array[int]) -> None:
        """A run of ``set_pte``/``set_pmd``: the same masks and one single-entry ``mmu_update`` each, which
        the hypervisor validates one by one (``Xen32.mmu_update_each``)."""
        ctx, w = self.ctx, self.ctx.pgt.entry_size
        vals = np.frombuffer(run, dtype=np.uint64)
        if op is SetOp.PTE and self.x.set_pte_init:
            old = np.frombuffer(ctx.cpu.read(ptr, w * len(vals)), dtype="<u8" if w == 8 else "<u4").astype(np.uint64)
            ro = (old & np.uint64(_PAGE_PRESENT | _PAGE_RW)) == np.uint64(_PAGE_PRESENT)
            vals = np.where(ro, vals & ~np.uint64(_PAGE_RW), vals)
        pos = 0
        while pos < len(vals):  # per page: each page of entries has its own machine frame
            va = ptr + w * pos
            n = min(len(vals) - pos, (0x1000 - (va & 0xFFF)) // w)
            failed = hv(ctx).mmu_update_each(self.x.virt_to_machine(va) | MMU_NORMAL_PT_UPDATE, vals[pos:pos + n])
            if failed:
                BUG(ctx, "arch/i386/xen/mmu.c", f"{op.value}: {failed} mmu_update(s) from {va:#x} refused")
            pos += n

    def make_entry(self, val: int) -> int:
        return self.x.make_entry(val)

    def entry_val(self, raw: int) -> int:
        return self.x.entry_val(raw)

    def make_entries(self, vals: array[int]) -> array[int]:
        return array("Q", [self.x.make_entry(v) for v in vals])

    def alloc_pte(self, pfn: Pfn) -> None:
        """``xen_alloc_pt_init``: early, everything is treated as pinned — the page becomes read-only."""
        self.x.make_lowmem_page_readonly(self.ctx.va(pfn << PAGE_SHIFT))









class XenI386CpuOps:
    """CR4 under Xen: ``native_read_cr4``/``xen_write_cr4`` trap in ring 1 and Xen emulates them — reads
    give the guest's view, writes that would change it are refused ("Attempt to change CR4 flags")."""

    def __init__(self, x: XenI386) -> None:
        self.x = x

    def read_cr4(self) -> int:
        return hv(self.x.ctx).guest_cr4

    def write_cr4(self, cr4: int) -> None:
        xen = hv(self.x.ctx)
        if cr4 & ~0x4 != xen.guest_cr4:  # X86_CR4_TSD masked by xen_write_cr4
            xen.printk(f"d{xen.domid} Attempt to change CR4 flags {xen.guest_cr4:08x} -> {cr4:08x}")

    def load_idt(self, base: VirtAddr, limit: int) -> None:
        return None

    def write_idt_entry(self, idt: VirtAddr, vector: int, lo: int, hi: int) -> None:
        return None


class XenI386InitOps:
    """``xen_memory_setup`` and the page-table hooks (see the module docstring)."""

    name = "xen"

    def __init__(self, x: XenI386) -> None:
        self.x, self.ctx = x, x.ctx

    def memory_setup(self) -> str:
        """``xen_memory_setup``: one RAM region [0, nr_pages) — a domU has no BIOS map."""
        self.ctx.mm.e820 = [(0, self.x.si.nr_pages << PAGE_SHIFT, 1)]
        return "Xen"

    def pagetable_setup_start(self, base: VirtAddr) -> None:
        ctx, x, g = self.ctx, self.x, self.ctx.pgt
        w = g.entry_size
        with ctx.running("xen_pagetable_setup_start"):
            x.set_pte_init = True  # paravirt_ops.set_pte = xen_set_pte_init
            x.si.init_mm_pgd = base  # before the copy: lookup_address walks base's copied entries
            xen_pgd = x.si.pt_base
            top = ctx.cpu.read(xen_pgd, w * g.ptrs_per_pgd)
            for i in range(g.ptrs_per_pgd):  # memcpy(base, xen_pgd, PTRS_PER_PGD * sizeof(pgd_t))
                old, new = peek(ctx, base + w * i, w), int.from_bytes(top[w * i:w * i + w], "little")
                if old != new:
                    ctx.emit(EntryStore(ctx.fn, "memcpy", *x._where(base + w * i), old, new))
            ctx.cpu.write(base, top)
            if ctx.pae:
                for i in range(g.ptrs_per_pgd):
                    e = int.from_bytes(top[w * i:w * i + w], "little")
                    if not e & _PAGE_PRESENT:
                        continue  # pgd_clear: a no-op with the pud folded (pgtable-nopud.h)
                    pmd = ctx.va(ctx.mm.bootmem.alloc_low(PAGE_SIZE, "xen_pagetable_setup_start: pmd copy"))
                    src = ctx.va(x.entry_val(e) & ~0xFFF & U32)  # pgd_page_vaddr(xen_pgd[i])
                    ctx.cpu.write(pmd, ctx.cpu.read(src, PAGE_SIZE))
                    ctx.emit(TablePage(ctx.fn, "pmd", "allocated", ctx.pa(pmd), (i << 30) & U32))
                    ctx.emit(Note(f"xen_pagetable_setup_start: pmd page {ctx.pa(pmd):#x} = a copy of Xen's "
                                  f"(pfn {ctx.pa(src) >> PAGE_SHIFT:#x}) for pgd[{i}]"))
                    x.make_lowmem_page_readonly(pmd)
                    set_pgd(ctx, base + w * i, 1 + ctx.pa(pmd))
            x.make_lowmem_page_readonly(ctx.sym("empty_zero_page"))
            x.make_lowmem_page_readonly(base)
            ctx.pv.mmu.write_cr3(PhysAddr(ctx.pa(base)))  # xen_write_cr3(__pa(base))

    def pagetable_setup_done(self, base: VirtAddr) -> None:
        ctx, x = self.ctx, self.x
        with ctx.running("xen_pagetable_setup_done"):
            x.set_pte_init = False  # paravirt_ops.alloc_pt = xen_alloc_pt; set_pte = xen_set_pte
            va = ctx.profile.fix_to_virt(ctx.profile.fix_paravirt_bootmap)
            self.set_pte_mfn(va, x.si.shared_info >> PAGE_SHIFT, PAGE_KERNEL_XEN)
            x.mmuext(MmuExt.PIN_L3_TABLE, x.pfn_to_mfn(ctx.pa(base) >> PAGE_SHIFT), "xen_pagetable_setup_done")
            ctx.emit(Note(f"xen_pagetable_setup_done: shared_info (mfn {x.si.shared_info >> PAGE_SHIFT:#x}) at "
                          f"{va:#x}; MMUEXT_PIN_L3_TABLE on swapper_pg_dir"
                          + ("" if ctx.pae else " — a 2-level Xen ignores a pin of a level it lacks")))

    def set_pte_mfn(self, vaddr: int, mfn: int, flags: int) -> None:
        """``set_pte_mfn``: walk swapper_pg_dir (BUG on a missing level), store <mfn, flags> as they are
        (``xen_set_pte``), flush that one mapping."""
        ctx, g, x = self.ctx, self.ctx.pgt, self.x
        pgd = ctx.sym("swapper_pg_dir") + g.entry_size * g.pgd_index(vaddr)
        pmd = pmd_offset(ctx, pud_offset(ctx, pgd, vaddr), vaddr)
        if not ctx.rd(pmd, g.entry_size) & _PAGE_PRESENT:
            BUG(ctx, "arch/i386/xen/mmu.c", f"set_pte_mfn({vaddr:#x}): no pmd")
        pte = pte_offset_kernel(ctx, pmd, vaddr)
        val = (mfn << PAGE_SHIFT) | flags
        ctx.emit(EntryStore(ctx.fn, "set_pte_mfn", *x._where(pte), peek(ctx, pte, g.entry_size), val))
        x.mmu_update(pte, val, "set_pte_mfn")
        ctx.pv.mmu.flush_tlb_one_user(VirtAddr(vaddr))


def xen_start_kernel(ctx: I386Context, start_info: int) -> None:
    """Model of xen_start_kernel(), arch/i386/xen/enlighten.c @ 2.6.23 (see the module for differences):
    the magic, the p2m, ``init_pg_tables_end`` after Xen's tables, ``xen_cr3``, ``reserve_top_address``,
    the boot parameters (loader type 9, the ramdisk) and the command line; then ``start_kernel``."""
    x = _xen(ctx)
    si = x.si
    with ctx.running("xen_start_kernel"):
        magic = ctx.cpu.read(start_info, 32).split(b"\0", 1)[0]
        if not magic.startswith(b"xen-3.0"):
            BUG(ctx, "arch/i386/xen/enlighten.c", f"start_info magic {magic!r} is not xen-3.0")
        rd = {k: ctx.rd(start_info + off, 4) for k, off in SI32.items() if k != "cmd_line"}
        si.va, si.nr_pages, si.shared_info = start_info, rd["nr_pages"], rd["shared_info"]
        si.pt_base, si.nr_pt_frames, si.mfn_list = rd["pt_base"], rd["nr_pt_frames"], rd["mfn_list"]
        ctx.wr(ctx.sym("init_pg_tables_end"), ctx.pa(si.pt_base) + si.nr_pt_frames * PAGE_SIZE, 4)
        si.xen_cr3 = ctx.pa(si.pt_base)
        si.init_mm_pgd = si.pt_base  # "use the Xen pagetables to start"
        reserve = (-hv(ctx).build.hypervisor_virt_start + 2 * PAGE_SIZE) & U32
        ctx.kernel_profile = dataclasses.replace(ctx.profile, paravirt_bootmap=True, top_reserve=reserve)
        ctx.print(f"Reserving virtual address space above 0x{-reserve & U32:08x}")
        params = ctx.sym("boot_params")
        ctx.wr(params + bp.TYPE_OF_LOADER, 9 << 4, 1)
        mod = rd["mod_start"]
        ctx.wr(params + bp.RAMDISK_IMAGE, ctx.pa(mod) if mod else 0, 4)
        ctx.wr(params + bp.RAMDISK_SIZE, rd["mod_len"], 4)
        cmd = ctx.cpu.read(start_info + SI32["cmd_line"], COMMAND_LINE_SIZE)
        ctx.cpu.write(ctx.sym("boot_command_line"), cmd)
        ctx.emit(Note(f"xen_start_kernel: {magic.decode()}, {si.nr_pages} pages, Xen's tables at {si.pt_base:#x} "
                      f"({si.nr_pt_frames} frames), p2m at {si.mfn_list:#x}, FIXADDR_TOP {ctx.profile.fixaddr_top:#x}"))


def _xen(ctx: I386Context) -> XenI386:
    init = ctx.pv.init
    assert isinstance(init, XenI386InitOps), "xen_start_kernel runs with the Xen backend"
    return init.x


def xen_pv_ops(ctx: I386Context) -> I386PvOps:
    """The Xen backend (2.6.23's ``xen_paravirt_ops`` for the members the path calls)."""
    x = XenI386(ctx)
    return I386PvOps(XenI386MmuOps(x), XenI386CpuOps(x), paravirt_enabled=True, init=XenI386InitOps(x))
