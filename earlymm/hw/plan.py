"""The walk plan: CR0/CR4/EFER and CPUID folded into per-level masks once (spec §1.2–§1.3; SDM Vol. 3A
§4.3–§4.5), so that the walk (``walk.py``) and the rights checks (``rights.py``) read precomputed data.
"""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.arch.entry import addr_mask, reserved_mask
from earlymm.arch.flags import Cr0, Cr4, Efer, PteFlag
from earlymm.arch.modes import Features, Level, PagingMode, level_specs, paging_mode

XD_BIT = 1 << 63
TABLE_ONLY, PS_SELECTS, ALWAYS_LEAF = 0, 1, 2


@dataclass(frozen=True, slots=True)
class LevelPlan:
    """One level of a plan: how the VA indexes it and which entry bits mean what there."""

    level: Level
    shift: int
    index_mask: int
    entry_size: int
    kind: int  # TABLE_ONLY / PS_SELECTS / ALWAYS_LEAF
    table_addr: int
    table_rsvd: int
    leaf_size: int
    leaf_addr: int
    leaf_rsvd: int
    rights: bool  # False for PAE PDPTEs, which carry no RW/US/XD
    from_regs: bool  # PAE PDPTEs come from the PDPTE registers, not memory
    pse36: bool


@dataclass(frozen=True, slots=True)
class WalkPlan:
    """Everything the walk needs from CR0/CR4/EFER and CPUID, precomputed."""

    mode: PagingMode
    levels: tuple[LevelPlan, ...]
    va_bits: int  # 48/57 for the canonical check, 0 for none
    nxe: bool
    wp: bool
    smep: bool
    smap: bool
    pke: bool
    pks: bool
    id_reported: bool
    maxphyaddr: int
    # The hot loop's view of ``levels`` (PAE's register-held PDPT level excluded): plain tuples,
    # because unpacking a tuple is several times cheaper than reading dataclass slots.
    rows: tuple[tuple[int, int, int, int, int, int, int, int], ...] = ()
    entry8: bool = True
    pae: bool = False
    pse36: bool = False
    canon_ones: int = 0
    no_xd: int = 0  # bit 63 when EFER.NXE=0 (XD then means nothing, or is a reserved bit)
    simple: bool = True  # no SMAP/PK: a supervisor data access needs only the RW/WP test


def compile_plan(cr0: int, cr4: int, efer: int, features: Features) -> WalkPlan:
    mode = paging_mode(cr0, cr4, efer)
    nxe = bool(efer & Efer.NXE) and mode not in (PagingMode.LEGACY32, PagingMode.DISABLED)
    pse = bool(cr4 & Cr4.PSE) or mode is not PagingMode.LEGACY32
    levels = []
    for spec in level_specs(mode, gbpages=features.gbpages, pse=pse and features.pse):
        if spec.level is Level.PT:
            kind = ALWAYS_LEAF
        elif spec.leaf_size:
            kind = PS_SELECTS
        else:
            kind = TABLE_ONLY
        from_regs = mode is PagingMode.PAE and spec.level is Level.PDPT
        table_rsvd = 0 if from_regs else reserved_mask(mode, spec.level, False, features, nxe)
        if kind == TABLE_ONLY and mode.is_ia32e and spec.level is Level.PDPT:
            table_rsvd |= int(PteFlag.PS)  # PS=1 with no 1 GiB-page support is reserved (spec §1.3)
        levels.append(LevelPlan(
            level=spec.level, shift=spec.shift, index_mask=spec.index_mask, entry_size=spec.entry_size,
            kind=kind, table_addr=addr_mask(mode, spec.level, False, features.maxphyaddr),
            table_rsvd=table_rsvd, leaf_size=spec.leaf_size or 0,
            leaf_addr=addr_mask(mode, spec.level, True, features.maxphyaddr),
            leaf_rsvd=reserved_mask(mode, spec.level, True, features, nxe) if kind != TABLE_ONLY else 0,
            rights=not from_regs, from_regs=from_regs,
            pse36=mode is PagingMode.LEGACY32 and spec.level is Level.PD and features.pse36,
        ))
    smep = bool(cr4 & Cr4.SMEP)
    # Per level, "is this entry a leaf" = entry & leafsel (PS for PDE/PDPTE, P — known set — for a PTE, 0 above).
    # and "present, a table pointer, no reserved bit" = (entry & fastmask) == 1: one test on the hot path.
    rows = tuple((lp.shift, lp.index_mask,
                  0 if lp.kind == ALWAYS_LEAF else 1 | lp.table_rsvd | (0x80 if lp.kind == PS_SELECTS else 0),
                  {ALWAYS_LEAF: 1, PS_SELECTS: 0x80, TABLE_ONLY: 0}[lp.kind],
                  lp.table_addr, lp.leaf_size, lp.leaf_addr, lp.leaf_rsvd)
                 for lp in levels if not lp.from_regs)
    va_bits = mode.va_bits if mode.is_ia32e else 0
    pke = bool(cr4 & Cr4.PKE) and mode.is_ia32e
    pks = bool(cr4 & Cr4.PKS) and mode.is_ia32e
    return WalkPlan(rows=rows, entry8=mode is not PagingMode.LEGACY32, pae=mode is PagingMode.PAE,
                    pse36=any(lp.pse36 for lp in levels),
                    canon_ones=(1 << (65 - va_bits)) - 1 if va_bits else 0,
                    simple=not (cr4 & Cr4.SMAP or pke or pks), no_xd=0 if nxe else XD_BIT,
        mode=mode, levels=tuple(levels), va_bits=va_bits, nxe=nxe,
        wp=bool(cr0 & Cr0.WP), smep=smep, smap=bool(cr4 & Cr4.SMAP), pke=pke, pks=pks,
        id_reported=smep or nxe, maxphyaddr=features.maxphyaddr,
    )
