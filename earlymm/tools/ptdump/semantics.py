"""How an enumerator reads entries: per level, which entries are leaves, tables, or faults.

Three readings of the same tables, because the tools ptdump imitates do not agree with the hardware:

* ``arch`` — the CPU's (spec §1.3–§1.4): reserved bits make an entry a fault, PS=1 in a PDPTE is a
  1 GiB page only with that CPU feature, addresses are bits (MAXPHYADDR-1):12. Compiled by
  ``earlymm.hw.walk.compile_plan``; this module only re-shapes that plan.
* ``qemu`` — QEMU 7.2's ``info tlb``/``info mem`` walkers (target/i386/monitor.c): no reserved-bit
  checks, PS ignored in PML4E/PML5E, table addresses masked with 0x3fffffffff000 (bits 49:12), and
  what ``print_pte`` prints of a leaf masked with per-size masks (which for PAE keep bit 63).
* ``linux`` — the kernel's ptdump walker (mm/ptdump.c over mm/pagewalk.c): like QEMU's but with
  ``PTE_PFN_MASK`` (bits 51:12) for table addresses.
* ``gva2gpa`` — QEMU 7.2's debug walk behind the monitor's ``gva2gpa`` (``x86_cpu_get_phys_page_attrs_debug``,
  target/i386/helper.c): like ``qemu`` but every address (table or page) is masked with
  ``PG_ADDRESS_MASK`` (bits 51:12), and 32-bit 4 MiB pages take PSE-36's bits 39:32 from bits 20:13.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from earlymm.arch.entry import mask
from earlymm.arch.flags import Cr4
from earlymm.arch.modes import Level, PagingMode
from earlymm.hw.plan import ALWAYS_LEAF, PS_SELECTS, WalkPlan

Reading = Literal["arch", "qemu", "linux", "gva2gpa"]
PS = 0x80
QEMU_TABLE = 0x3_FFFF_FFFF_F000  # QEMU's hard-coded table-address mask for PAE/4/5-level
LINUX_PFN = mask(51, 12)  # PTE_PFN_MASK with __PHYSICAL_MASK_SHIFT 52 (no SME)
PG_ADDRESS_MASK = mask(51, 12)  # QEMU's PG_ADDRESS_MASK, used by its debug walk


@dataclass(frozen=True, slots=True)
class Row:
    """One paging level as the enumerator sees it."""

    level: Level
    shift: int
    entries: int  # 1024 (32-bit), 512, or 4 (PAE PDPT)
    entry_size: int
    leafsel: int  # a present entry is a leaf iff entry & leafsel (P for a PTE, PS for PDE/PDPTE, else 0)
    taddr: int  # next-table address bits
    trsvd: int  # reserved bits of a table-pointing entry (arch only)
    lsize: int  # page size mapped by a leaf here (0: never a leaf)
    laddr: int  # page-address bits of a leaf (QEMU: what print_pte keeps)
    lrsvd: int  # reserved bits of a leaf (arch only)
    rights: bool  # False for PAE PDPTEs, which carry no RW/US/XD

    @property
    def span(self) -> int:
        """Bytes of virtual address space one entry covers."""
        return 1 << self.shift


@dataclass(frozen=True, slots=True)
class Semantics:
    reading: Reading
    mode: PagingMode
    rows: tuple[Row, ...]
    va_bits: int  # canonical width for sign extension (48/57), 32 for legacy modes
    nxe: bool
    pse36: bool  # 32-bit 4 MiB pages carry physical bits 39:32 in bits 20:13

    @property
    def canon_high(self) -> int:
        """Bits OR-ed into a VA whose top implemented bit is set (0 outside IA-32e)."""
        return ((1 << 64) - 1) ^ ((1 << self.va_bits) - 1) if self.mode.is_ia32e else 0

    def leaf_pa(self, row: Row, entry: int) -> int:
        pa = entry & row.laddr
        if self.pse36 and row.lsize == 1 << 22:
            pa |= ((entry >> 13) & 0xFF) << 32
        return pa

    def flag_bits(self, row: Row) -> int:
        """Bits of a leaf that are attributes rather than address (for runs and JSON)."""
        addr = row.laddr | (mask(20, 13) if self.pse36 and row.lsize == 1 << 22 else 0)
        return ((1 << (8 * row.entry_size)) - 1) & ~addr


def arch_semantics(plan: WalkPlan) -> Semantics:
    """The hardware's reading, from the walker's compiled plan."""
    rows = []
    for lp in plan.levels:
        leafsel = 1 if lp.kind == ALWAYS_LEAF else PS if lp.kind == PS_SELECTS else 0
        rows.append(Row(lp.level, lp.shift, lp.index_mask + 1, lp.entry_size, leafsel, lp.table_addr,
                        lp.table_rsvd, lp.leaf_size if leafsel else 0, lp.leaf_addr,
                        lp.leaf_rsvd if leafsel else 0, lp.rights))
    return Semantics("arch", plan.mode, tuple(rows), plan.mode.va_bits, plan.nxe, plan.pse36)


def tool_semantics(reading: Reading, mode: PagingMode, cr4: int, nxe: bool) -> Semantics:
    """QEMU's or Linux's reading of ``mode`` (``cr4`` only matters for 32-bit PSE)."""
    L = Level
    if reading == "gva2gpa":
        return _debug_semantics(mode, cr4, nxe)
    if mode is PagingMode.LEGACY32:
        # tlb_info_32: PSE pages only with CR4.PSE; print masks ~((1 << 21) - 1) and ~0xfff on u32 values.
        pse = PS if cr4 & Cr4.PSE else 0
        rows: tuple[Row, ...] = (Row(L.PD, 22, 1024, 4, pse, 0xFFFF_F000, 0, 1 << 22, 0xFFE0_0000, 0, True),
                Row(L.PT, 12, 1024, 4, 1, 0, 0, 1 << 12, 0xFFFF_F000, 0, True))
        return Semantics(reading, mode, rows, 32, False, False)
    if mode is PagingMode.PAE:
        # tlb_info_pae32 masks 2 MiB leaves with ~((1 << 20) - 1) and 4 KiB ones with ~0xfff: bit 63 stays.
        rows = (Row(L.PDPT, 30, 4, 8, 0, QEMU_TABLE, 0, 0, 0, 0, False),
                Row(L.PD, 21, 512, 8, PS, QEMU_TABLE, 0, 1 << 21, ~0xF_FFFF & (2**64 - 1), 0, True),
                Row(L.PT, 12, 512, 8, 1, 0, 0, 1 << 12, ~0xFFF & (2**64 - 1), 0, True))
        return Semantics(reading, mode, rows, 32, nxe, False)
    if not mode.is_ia32e:
        raise ValueError("paging is disabled: there are no page tables to dump")
    qemu = reading == "qemu"
    table = QEMU_TABLE if qemu else LINUX_PFN
    upper = [Row(L.PML5, 48, 512, 8, 0, table, 0, 0, 0, 0, True)] if mode is PagingMode.LONG5 else []
    rows = (*upper,
            Row(L.PML4, 39, 512, 8, 0, table, 0, 0, 0, 0, True),
            Row(L.PDPT, 30, 512, 8, PS, table, 0, 1 << 30, QEMU_TABLE & mask(51, 30) if qemu else mask(51, 30), 0,
                True),
            Row(L.PD, 21, 512, 8, PS, table, 0, 1 << 21, QEMU_TABLE & mask(51, 21) if qemu else mask(51, 21), 0,
                True),
            Row(L.PT, 12, 512, 8, 1, 0, 0, 1 << 12, table, 0, True))
    return Semantics(reading, mode, rows, mode.va_bits, nxe, False)


def _debug_semantics(mode: PagingMode, cr4: int, nxe: bool) -> Semantics:
    """QEMU 7.2's ``x86_cpu_get_phys_page_attrs_debug``: present bits and PS only, PG_ADDRESS_MASK throughout."""
    L, pg = Level, PG_ADDRESS_MASK
    if mode is PagingMode.LEGACY32:
        pse = PS if cr4 & Cr4.PSE else 0
        rows: tuple[Row, ...] = (Row(L.PD, 22, 1024, 4, pse, 0xFFFF_F000, 0, 1 << 22, 0xFFC0_0000, 0, True),
                                 Row(L.PT, 12, 1024, 4, 1, 0, 0, 1 << 12, 0xFFFF_F000, 0, True))
        return Semantics("gva2gpa", mode, rows, 32, False, True)
    if mode is PagingMode.PAE:
        rows = (Row(L.PDPT, 30, 4, 8, 0, pg, 0, 0, 0, 0, False),
                Row(L.PD, 21, 512, 8, PS, pg, 0, 1 << 21, mask(51, 21), 0, True),
                Row(L.PT, 12, 512, 8, 1, 0, 0, 1 << 12, pg, 0, True))
        return Semantics("gva2gpa", mode, rows, 32, nxe, False)
    if not mode.is_ia32e:
        raise ValueError("paging is disabled: there are no page tables to walk")
    upper = [Row(L.PML5, 48, 512, 8, 0, pg, 0, 0, 0, 0, True)] if mode is PagingMode.LONG5 else []
    rows = (*upper,
            Row(L.PML4, 39, 512, 8, 0, pg, 0, 0, 0, 0, True),
            Row(L.PDPT, 30, 512, 8, PS, pg, 0, 1 << 30, mask(51, 30), 0, True),
            Row(L.PD, 21, 512, 8, PS, pg, 0, 1 << 21, mask(51, 21), 0, True),
            Row(L.PT, 12, 512, 8, 1, 0, 0, 1 << 12, pg, 0, True))
    return Semantics("gva2gpa", mode, rows, mode.va_bits, nxe, False)
