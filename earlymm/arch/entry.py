"""Decoding of paging-structure entries: address bits, reserved bits, flags (spec §1.3; SDM §4.3–§4.5).

These functions are the single statement of Intel's entry formats. The walker compiles them into
per-level masks once per register state; the tools use them to explain an entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.arch.flags import PK_SHIFT, PteFlag
from earlymm.arch.modes import Features, Level, PagingMode


def mask(hi: int, lo: int) -> int:
    """Bits hi..lo inclusive (empty when hi < lo)."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) if hi >= lo else 0


def field(value: int, hi: int, lo: int) -> int:
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def addr_mask(mode: PagingMode, level: Level, leaf: bool, maxphyaddr: int) -> int:
    """Bits of an entry that hold the physical address of the next table or of the page."""
    if mode is PagingMode.LEGACY32:
        return mask(31, 22) if leaf and level is Level.PD else mask(31, 12)
    m = maxphyaddr
    if leaf and level is Level.PDPT:
        return mask(m - 1, 30)
    if leaf and level is Level.PD:
        return mask(m - 1, 21)
    return mask(m - 1, 12)


def pdpte_reserved(maxphyaddr: int) -> int:
    """Reserved bits of a present PAE PDPTE; any set gives #GP(0) at the CR3 load (spec §1.3)."""
    return mask(2, 1) | mask(8, 5) | mask(63, maxphyaddr)


def reserved_mask(mode: PagingMode, level: Level, leaf: bool, features: Features, nxe: bool) -> int:
    """Reserved bits of a present entry at ``level`` (``leaf``: PS=1, or a PTE). RSVD #PF if any is set.

    PS=1 where no page can be mapped (PML4E/PML5E, PDPTE without 1 GiB pages) is reported by the
    walker through ``leaf_size is None``; here PS of a PML4E/PML5E is part of the table mask.
    """
    m = features.maxphyaddr
    if mode is PagingMode.LEGACY32:
        if leaf and level is Level.PD:
            # PSE-36: bits 20:13 carry phys bits 39:32; those beyond MAXPHYADDR (≤ 40) are reserved.
            m32 = min(m, 40) if features.pse36 else 32
            return mask(21, 21) | mask(20, 13 + (m32 - 32))
        return 0
    hi = mask(62, m) if mode is PagingMode.PAE else mask(51, m)
    if not nxe:
        hi |= 1 << 63
    if mode is PagingMode.PAE and level is Level.PDPT:
        return pdpte_reserved(m)
    if level in (Level.PML4, Level.PML5):
        return hi | int(PteFlag.PS)
    if leaf and level is Level.PDPT:
        return hi | mask(29, 13)
    if leaf and level is Level.PD:
        return hi | mask(20, 13)
    return hi


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded entry, for explanation; the walker itself works on raw integers."""

    raw: int
    level: Level
    mode: PagingMode

    @property
    def present(self) -> bool:
        return bool(self.raw & PteFlag.P)

    def is_leaf(self, features: Features, pse: bool = True) -> bool:
        if self.level is Level.PT:
            return True
        if self.level in (Level.PML4, Level.PML5) or (self.mode is PagingMode.PAE and self.level is Level.PDPT):
            return False
        if self.mode is PagingMode.LEGACY32 and not pse:
            return False
        return bool(self.raw & PteFlag.PS)

    def flag_names(self, leaf: bool) -> list[str]:
        r = self.raw
        names = []
        for f, name in ((PteFlag.P, "P"), (PteFlag.RW, "RW"), (PteFlag.US, "US"), (PteFlag.PWT, "PWT"),
                        (PteFlag.PCD, "PCD"), (PteFlag.A, "A")):
            if r & f:
                names.append(name)
        if leaf and r & PteFlag.D:
            names.append("D")
        if r & PteFlag.PS:
            names.append("PAT" if self.level is Level.PT else "PS")
        if leaf and r & PteFlag.G:
            names.append("G")
        if leaf and self.level is not Level.PT and self.mode is not PagingMode.LEGACY32 and r & PteFlag.PAT_LARGE:
            names.append("PAT")
        if self.mode is not PagingMode.LEGACY32 and r >> 63:
            names.append("XD")
        if leaf and self.mode.is_ia32e and field(r, 62, PK_SHIFT):
            names.append(f"PK={field(r, 62, PK_SHIFT)}")
        return names
