"""The 6.1 Xen PV guest's view of its machine (arch/x86/xen @ Linux 6.1, spec §5): memory through the
MMU at kernel virtual addresses, the p2m list at ``xen_p2m_addr``, the m2p through Xen's read-only window,
the pfn↔mfn conversions of every entry, and the hypercalls.

Everything the guest reads or writes goes through ``Cpu.load``/``store`` in ring 3 on the current CR3,
so a store into a read-only page-table page faults into Xen (which emulates it for L1 pages, or crashes
the domain), exactly as on the real machine. Kernel variables the model needs (``xen_p2m_size``,
``max_pfn_mapped``, ``__supported_pte_mask`` …) are fields here; page tables are only ever bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

from earlymm.hw.faults import SimulationError
from earlymm.kernel.events import Note
from earlymm.platform.xen.consts import (
    MACH2PHYS_VIRT_START,
    MMU_NORMAL_PT_UPDATE,
    SI_FIRST_P2M_PFN,
    SI_FLAGS,
    SI_MFN_LIST,
    SI_MOD_LEN,
    SI_MOD_START,
    SI_NR_P2M_FRAMES,
    SI_NR_PAGES,
    SI_NR_PT_FRAMES,
    SI_PT_BASE,
    SI_SHARED_INFO,
    MmuExt,
)
from earlymm.platform.xen.host417 import Dom0Machine

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
PAGE_OFFSET = 0xFFFF_8880_0000_0000  # page_offset_base of a 4-level kernel booted with nokaslr
KERNEL_IMAGE_SIZE = 1 << 30  # CONFIG_RANDOMIZE_BASE
PAGE_SHIFT, PAGE_SIZE, PMD_SIZE = 12, 1 << 12, 1 << 21
PTE_PFN_MASK = 0x000F_FFFF_FFFF_F000  # __PHYSICAL_MASK_SHIFT 52
PTE_FLAGS_MASK = ~PTE_PFN_MASK & ((1 << 64) - 1)
_PAGE_PRESENT, _PAGE_RW, _PAGE_USER, _PAGE_PSE, _PAGE_GLOBAL = 0x1, 0x2, 0x4, 0x80, 0x100
_PAGE_NX = 1 << 63
_PAGE_TABLE = 0x67  # P RW USER A D
PAGE_KERNEL = 0x8000_0000_0000_0163  # P RW A D G NX
PAGE_KERNEL_RO = PAGE_KERNEL & ~_PAGE_RW
INVALID_P2M_ENTRY = (1 << 64) - 1
IDENTITY_FRAME_BIT = 1 << 62
FOREIGN_FRAME_BIT = 1 << 63
ULONG = (1 << 64) - 1

# what the model reads from the kernel's symbol table (a real build's kallsyms)
REQUIRED_SYMBOLS = ("_text", "_end", "__brk_base", "init_top_pgt", "level3_ident_pgt", "level2_ident_pgt",
                    "level3_kernel_pgt", "level2_kernel_pgt", "level2_fixmap_pgt", "level1_fixmap_pgt",
                    "level3_user_vsyscall", "bm_pte", "xen_remap_buf", "__per_cpu_load", "gdt_page")


class GuestBug(SimulationError):
    """The kernel's ``BUG()``: a hypercall the guest relies on failed."""

    outcome = "guest_bug"


@dataclass(frozen=True)
class StartInfo:
    """The fields of ``struct start_info`` the early boot uses (xen/include/public/xen.h)."""

    nr_pages: int
    shared_info: int
    pt_base: int
    nr_pt_frames: int
    mfn_list: int
    first_p2m_pfn: int
    nr_p2m_frames: int
    flags: int
    mod_start: int
    mod_len: int


@dataclass
class Xen61Guest:
    """The kernel's Xen state (``xen_start_info``, ``xen_p2m_addr``/``size``, ``xen_max_p2m_pfn``,
    ``max_pfn_mapped``, ``_brk_end``, the per-cpu ``xen_cr3``) over the running machine."""

    m: Dom0Machine
    syms: dict[str, int]
    si_va: int  # xen_start_info (RSI at startup_xen)
    si: StartInfo = field(init=False)
    supported_pte_mask: int = ULONG
    p2m_addr: int = 0
    p2m_size: int = 0
    max_p2m_pfn: int = 0
    max_pfn_mapped: int = 0
    max_pfn: int = 0
    brk_end: int = 0
    xen_cr3: int = 0
    released_pages: int = 0
    remap_mfn: int = INVALID_P2M_ENTRY
    e820: list[tuple[int, int, int]] = field(default_factory=list)  # the kernel's e820_table (start, end, type)
    extra_mem: list[tuple[int, int]] = field(default_factory=list)  # xen_extra_mem: (start_pfn, n_pfns)
    pgt_buf: tuple[int, int] = (0, 0)  # early_alloc_pgt_buf: [pgt_buf_start, pgt_buf_top) pfns
    pt_kept: tuple[int, int] = (0, 0)  # xen_pt_base, xen_pt_size: the bootstrap tables still in use
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [s for s in REQUIRED_SYMBOLS if s not in self.syms]
        if missing:
            raise ValueError(f"the kernel symbols lack {', '.join(missing)} (give the kernel's own kallsyms)")
        f = {off: self.rd(self.si_va + off) for off in (SI_NR_PAGES, SI_SHARED_INFO, SI_PT_BASE, SI_NR_PT_FRAMES,
                                                        SI_MFN_LIST, SI_FIRST_P2M_PFN, SI_NR_P2M_FRAMES, SI_FLAGS,
                                                        SI_MOD_START, SI_MOD_LEN)}
        self.si = StartInfo(f[SI_NR_PAGES], f[SI_SHARED_INFO], f[SI_PT_BASE], f[SI_NR_PT_FRAMES], f[SI_MFN_LIST],
                            f[SI_FIRST_P2M_PFN], f[SI_NR_P2M_FRAMES], f[SI_FLAGS] & 0xFFFF_FFFF, f[SI_MOD_START],
                            f[SI_MOD_LEN])
        self.brk_end = self.syms["__brk_base"]

    def sym(self, name: str) -> int:
        return self.syms[name]

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.m.trace.emit(Note(text))

    def bug(self, where: str, why: str) -> NoReturn:
        raise GuestBug(f"kernel BUG at {where}: {why}", list(self.m.trace.recent))

    # -- memory through the MMU ------------------------------------------------------------------------
    def rd(self, va: int) -> int:
        return self.m.cpu.load(va, 8)

    def wr(self, va: int, value: int) -> None:
        self.m.cpu.store(va, 8, value)

    def read(self, va: int, n: int) -> bytes:
        return self.m.cpu.read(va, n)

    def write(self, va: int, data: bytes) -> None:
        self.m.cpu.write(va, data)

    # -- address conversions (page_64.h; phys_base is 0 under Xen: __startup_64 never runs) ---------
    def pa(self, va: int) -> int:
        return va - START_KERNEL_MAP if va >= START_KERNEL_MAP else (va - PAGE_OFFSET) & ULONG

    def va(self, pa: int) -> int:
        return (pa + PAGE_OFFSET) & ULONG

    # -- p2m / m2p (arch/x86/include/asm/xen/page.h, p2m.c) -----------------------------------------
    def pfn_to_mfn(self, pfn: int) -> int:
        """``__pfn_to_mfn``: the list entry below ``xen_p2m_size``; identity beyond ``xen_max_p2m_pfn``."""
        if pfn < self.p2m_size:
            return self.rd(self.p2m_addr + 8 * pfn)
        if pfn < self.max_p2m_pfn:  # xen_chk_extra_mem
            return INVALID_P2M_ENTRY if any(s <= pfn < s + n for s, n in self.extra_mem) else pfn | IDENTITY_FRAME_BIT
        return pfn | IDENTITY_FRAME_BIT

    def set_phys_to_machine(self, pfn: int, mfn: int) -> bool:
        """``__set_phys_to_machine`` while the list is the builder's: one store into it."""
        if pfn >= self.p2m_size:
            return mfn == INVALID_P2M_ENTRY
        self.wr(self.p2m_addr + 8 * pfn, mfn)
        return True

    def mfn_to_pfn(self, mfn: int) -> int:
        """``mfn_to_pfn``: the m2p read through ``machine_to_phys_mapping``, checked against the p2m."""
        pfn = self.rd(MACH2PHYS_VIRT_START + 8 * mfn) if mfn < self.m.frames.nr_frames else ULONG
        if pfn != ULONG and self.pfn_to_mfn(pfn) != mfn:
            pfn = ULONG
        if pfn == ULONG and self.pfn_to_mfn(mfn) == mfn | IDENTITY_FRAME_BIT:
            pfn = mfn
        return pfn

    def pte_pfn_to_mfn(self, val: int) -> int:
        if not val & _PAGE_PRESENT:
            return val
        flags = val & PTE_FLAGS_MASK
        mfn = self.pfn_to_mfn((val & PTE_PFN_MASK) >> PAGE_SHIFT)
        if mfn == INVALID_P2M_ENTRY:
            mfn = flags = 0
        else:
            mfn &= ~(FOREIGN_FRAME_BIT | IDENTITY_FRAME_BIT)
        return (mfn << PAGE_SHIFT) | flags

    def pte_mfn_to_pfn(self, val: int) -> int:
        """``pte_val`` / ``pXd_val``: an entry as the kernel sees it."""
        if not val & _PAGE_PRESENT:
            return val
        pfn = self.mfn_to_pfn((val & PTE_PFN_MASK) >> PAGE_SHIFT)
        flags = val & PTE_FLAGS_MASK
        return flags & ~_PAGE_PRESENT if pfn == ULONG else (pfn << PAGE_SHIFT) | flags

    def make_pte_init(self, val: int) -> int:
        """``xen_make_pte_init``: the initial p2m list's own pages (outside the kernel map) read-only."""
        pfn = (val & PTE_PFN_MASK) >> PAGE_SHIFT
        si = self.si
        if si.mfn_list < START_KERNEL_MAP and si.first_p2m_pfn <= pfn < si.first_p2m_pfn + si.nr_p2m_frames:
            val &= ~_PAGE_RW
        return self.pte_pfn_to_mfn(val)

    def massage(self, prot: int) -> int:
        return prot & self.supported_pte_mask if prot & _PAGE_PRESENT else prot

    def pfn_pte(self, pfn: int, prot: int) -> int:
        return self.make_pte_init((pfn << PAGE_SHIFT) | self.massage(prot))

    def mfn_pte(self, mfn: int, prot: int) -> int:
        return (mfn << PAGE_SHIFT) | self.massage(prot)

    def virt_to_machine(self, va: int) -> int:
        mfn = self.pfn_to_mfn(self.pa(va) >> PAGE_SHIFT)
        if mfn == INVALID_P2M_ENTRY:
            self.bug("arch/x86/xen/mmu_pv.c", f"virt_to_machine({va:#x}): pfn without an mfn")
        return ((mfn & ~(IDENTITY_FRAME_BIT | FOREIGN_FRAME_BIT)) << PAGE_SHIFT) | (va & (PAGE_SIZE - 1))

    # -- hypercalls -------------------------------------------------------------------------------------
    def mmu_update(self, reqs: list[tuple[int, int]]) -> int:
        rc, _done = self.m.xen.mmu_update(reqs)
        return rc

    def update_va_mapping(self, va: int, val: int, flags: int = 0) -> int:
        return self.m.xen.update_va_mapping(va, val, flags)

    def mmuext_op(self, ops: list[tuple[MmuExt, int]]) -> int:
        return self.m.xen.mmuext_op(ops)

    def set_pmd_hyper(self, ptr: int, val: int) -> None:
        """``xen_set_pmd_hyper`` (also ``xen_set_pud_hyper``): one ``mmu_update`` at the entry's machine
        address (``arbitrary_virt_to_machine``), the value already in machine terms."""
        if self.mmu_update([(self.virt_to_machine(ptr) | MMU_NORMAL_PT_UPDATE, val)]):
            self.bug("arch/x86/xen/mmu_pv.c", f"xen_set_pmd_hyper({ptr:#x}, {val:#x})")
