"""The shape of the kernel's page tables and Linux's helpers over it (design §7.2 ``kernel/pgtable.py``).

Model of the pgtable geometry of arch/x86/include/asm/pgtable_64_types.h, pgtable_32_types.h,
pgtable-2level_types.h, pgtable-3level_types.h and the generic folding of include/asm-generic/
pgtable-nop4d.h / pgtable-nopud.h / pgtable-nopmd.h (spec §2.1). Five Linux levels — pgd, p4d, pud, pmd,
pte — of which some are *folded* (one entry, the level above's entry doubling as it):

* x86-64 4-level: pgd → (p4d folded) → pud → pmd → pte; 5-level: all five. Since Linux 4.17 the p4d is
  folded *at run time*: ``pgtable_l5_enabled``, ``pgdir_shift`` (39 or 48) and ``ptrs_per_p4d`` (1 or 512)
  are variables set by ``__startup_64`` from CR4.LA57 (spec §3.9), so one kernel serves both.
* i386 2-level: pgd (the PD, 1024 4-byte entries) → (p4d, pud, pmd folded) → pte.
* i386 PAE: pgd (the 4-entry PDPT) → (p4d, pud folded) → pmd → pte, 8-byte entries.

``LINUX_TO_HW`` is the one translation table between the two vocabularies (design style rule 1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from earlymm.arch.modes import Level


class PgLevel(enum.IntEnum):
    """Linux's levels, pgd topmost (the values order them; they are not SDM levels)."""

    PTE = 1
    PMD = 2
    PUD = 3
    P4D = 4
    PGD = 5


@dataclass(frozen=True, slots=True)
class PgtableGeometry:
    """Shifts and entry counts per Linux level; ``ptrs_per_*`` of 1 means folded."""

    name: str
    entry_size: int
    pgdir_shift: int
    ptrs_per_pgd: int
    p4d_shift: int
    ptrs_per_p4d: int
    pud_shift: int
    ptrs_per_pud: int
    pmd_shift: int
    ptrs_per_pmd: int
    ptrs_per_pte: int
    pte_pfn_mask: int

    # -- which levels exist ------------------------------------------------------------------------
    @property
    def pgtable_l5_enabled(self) -> bool:
        return self.ptrs_per_p4d > 1

    def folded(self, level: PgLevel) -> bool:
        return {PgLevel.P4D: self.ptrs_per_p4d, PgLevel.PUD: self.ptrs_per_pud,
                PgLevel.PMD: self.ptrs_per_pmd}.get(level, 2) == 1

    def levels(self) -> tuple[PgLevel, ...]:
        """The levels that exist, pgd first."""
        return tuple(lv for lv in (PgLevel.PGD, PgLevel.P4D, PgLevel.PUD, PgLevel.PMD, PgLevel.PTE)
                     if not self.folded(lv))

    def hw_level(self, level: PgLevel) -> Level:
        """``LINUX_TO_HW``: the SDM level that a (non-folded) Linux level is on this geometry."""
        return LINUX_TO_HW[(self.name, level)]

    # -- indices (pgd_index … pte_index) -------------------------------------------------------------
    def pgd_index(self, addr: int) -> int:
        return (addr >> self.pgdir_shift) & (self.ptrs_per_pgd - 1)

    def p4d_index(self, addr: int) -> int:
        return (addr >> self.p4d_shift) & (self.ptrs_per_p4d - 1)

    def pud_index(self, addr: int) -> int:
        return (addr >> self.pud_shift) & (self.ptrs_per_pud - 1)

    def pmd_index(self, addr: int) -> int:
        return (addr >> self.pmd_shift) & (self.ptrs_per_pmd - 1)

    def pte_index(self, addr: int) -> int:
        return (addr >> 12) & (self.ptrs_per_pte - 1)

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def pgdir_size(self) -> int:
        return 1 << self.pgdir_shift

    @property
    def pud_size(self) -> int:
        return 1 << self.pud_shift

    @property
    def pmd_size(self) -> int:
        return 1 << self.pmd_shift

    def pgd_addr_end(self, addr: int, end: int) -> int:
        """``pgd_addr_end``: the next pgd boundary after ``addr``, or ``end`` if that comes first."""
        u64 = (1 << 64) - 1
        boundary = ((addr + self.pgdir_size) & ~(self.pgdir_size - 1)) & u64
        return boundary if (boundary - 1) & u64 < (end - 1) & u64 else end


def x86_64(*, l5: bool, physical_mask_shift: int) -> PgtableGeometry:
    """The x86-64 geometry as ``__startup_64`` leaves it: 4-level (p4d folded) or 5-level."""
    mask = ((1 << physical_mask_shift) - 1) & ~0xFFF
    return PgtableGeometry("x86-64 5-level" if l5 else "x86-64 4-level", 8, 48 if l5 else 39, 512, 39,
                           512 if l5 else 1, 30, 512, 21, 512, 512, mask)


def i386(*, pae: bool) -> PgtableGeometry:
    """i386: 2-level (PD and PT, 4-byte entries) or PAE (PDPT, PD, PT, 8-byte entries)."""
    if pae:
        return PgtableGeometry("i386 PAE", 8, 30, 4, 30, 1, 30, 1, 21, 512, 512, ((1 << 44) - 1) & ~0xFFF)
    return PgtableGeometry("i386 2-level", 4, 22, 1024, 22, 1, 22, 1, 22, 1, 1024, 0xFFFF_F000)


LINUX_TO_HW: dict[tuple[str, PgLevel], Level] = {
    ("x86-64 4-level", PgLevel.PGD): Level.PML4, ("x86-64 4-level", PgLevel.PUD): Level.PDPT,
    ("x86-64 4-level", PgLevel.PMD): Level.PD, ("x86-64 4-level", PgLevel.PTE): Level.PT,
    ("x86-64 5-level", PgLevel.PGD): Level.PML5, ("x86-64 5-level", PgLevel.P4D): Level.PML4,
    ("x86-64 5-level", PgLevel.PUD): Level.PDPT, ("x86-64 5-level", PgLevel.PMD): Level.PD,
    ("x86-64 5-level", PgLevel.PTE): Level.PT,
    ("i386 PAE", PgLevel.PGD): Level.PDPT, ("i386 PAE", PgLevel.PMD): Level.PD, ("i386 PAE", PgLevel.PTE): Level.PT,
    ("i386 2-level", PgLevel.PGD): Level.PD, ("i386 2-level", PgLevel.PTE): Level.PT,
}

_PAGE_PRESENT, _PAGE_PSE = 0x1, 0x80


class PgtableMemory(Protocol):
    """What the ``*_offset`` helpers need: entries read at kernel virtual addresses (through the MMU),
    the entry value as the kernel sees it (``pXd_val``: identity natively, mfn→pfn under Xen), and
    ``__va``."""

    pgt: PgtableGeometry

    def rd(self, va: int, size: int = 8) -> int: ...

    def entry_val(self, raw: int) -> int: ...

    def va(self, pa: int) -> int: ...


def pgd_offset_pgd(g: PgtableGeometry, pgd_base: int, addr: int) -> int:
    """``pgd_offset_pgd(pgd, addr)``: the address of the pgd entry for ``addr``."""
    return pgd_base + g.entry_size * g.pgd_index(addr)


def _page_vaddr(m: PgtableMemory, entry_p: int) -> int:
    """``pXd_page_vaddr(*entry_p)`` = ``__va(pXd_val(*entry_p) & PTE_PFN_MASK)``."""
    return m.va(m.entry_val(m.rd(entry_p, m.pgt.entry_size)) & m.pgt.pte_pfn_mask)


def p4d_offset(m: PgtableMemory, pgd_p: int, addr: int) -> int:
    """Folded: the pgd entry itself (pgtable-nop4d.h, and x86's run-time check of pgtable_l5_enabled)."""
    if m.pgt.folded(PgLevel.P4D):
        return pgd_p
    return _page_vaddr(m, pgd_p) + m.pgt.entry_size * m.pgt.p4d_index(addr)


def pud_offset(m: PgtableMemory, p4d_p: int, addr: int) -> int:
    if m.pgt.folded(PgLevel.PUD):
        return p4d_p
    return _page_vaddr(m, p4d_p) + m.pgt.entry_size * m.pgt.pud_index(addr)


def pmd_offset(m: PgtableMemory, pud_p: int, addr: int) -> int:
    if m.pgt.folded(PgLevel.PMD):
        return pud_p
    return _page_vaddr(m, pud_p) + m.pgt.entry_size * m.pgt.pmd_index(addr)


def pte_offset_kernel(m: PgtableMemory, pmd_p: int, addr: int) -> int:
    return _page_vaddr(m, pmd_p) + m.pgt.entry_size * m.pgt.pte_index(addr)


def entry_none(val: int) -> bool:
    """``pXd_none``."""
    return val == 0


def entry_present(val: int) -> bool:
    """``pXd_present``."""
    return bool(val & _PAGE_PRESENT)


def entry_large(val: int) -> bool:
    """``pmd_large``/``pud_large``: a leaf one or two levels up (PSE)."""
    return bool(val & _PAGE_PSE)
