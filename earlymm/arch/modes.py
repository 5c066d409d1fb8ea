"""Paging modes, CPU features and the per-level structure of each mode (spec §1.2; SDM Vol. 3A §4.1).

``level_specs(mode)`` is the data the single walker loops over, in the spirit of volatility3's
per-mode structure tables: no ladder of per-level code anywhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from earlymm.arch.flags import Cr0, Cr4, Efer


class Level(enum.IntEnum):
    """Paging-structure levels in SDM vocabulary (the leaf-most is 1)."""

    PT = 1
    PD = 2
    PDPT = 3
    PML4 = 4
    PML5 = 5

    @property
    def entry_name(self) -> str:
        return {1: "PTE", 2: "PDE", 3: "PDPTE", 4: "PML4E", 5: "PML5E"}[int(self)]


class PagingMode(enum.Enum):
    DISABLED = "none"
    LEGACY32 = "32-bit"
    PAE = "pae"
    LONG4 = "4-level"
    LONG5 = "5-level"

    @property
    def is_ia32e(self) -> bool:
        return self in (PagingMode.LONG4, PagingMode.LONG5)

    @property
    def va_bits(self) -> int:
        return {PagingMode.LONG4: 48, PagingMode.LONG5: 57}.get(self, 32)


def paging_mode(cr0: int, cr4: int, efer: int) -> PagingMode:
    """The paging mode selected by CR0.PG, CR4.PAE, EFER.LME/LMA and CR4.LA57 (spec §1.2)."""
    if not cr0 & Cr0.PG:
        return PagingMode.DISABLED
    if not cr4 & Cr4.PAE:
        return PagingMode.LEGACY32
    if not efer & Efer.LMA:
        return PagingMode.PAE
    return PagingMode.LONG5 if cr4 & Cr4.LA57 else PagingMode.LONG4


@dataclass(frozen=True, slots=True)
class LevelSpec:
    """One level of a mode: which VA bits index it, its entry size, and the leaf sizes it may map."""

    level: Level
    shift: int
    index_bits: int
    entry_size: int
    leaf_size: int | None  # page size when this entry maps a page (None: never a leaf)

    @property
    def index_mask(self) -> int:
        return (1 << self.index_bits) - 1


def level_specs(mode: PagingMode, *, gbpages: bool = True, pse: bool = True) -> tuple[LevelSpec, ...]:
    """Levels from the root down. PAE's PDPT level is served from the PDPTE registers."""
    L, S = Level, LevelSpec
    if mode is PagingMode.LEGACY32:
        return (S(L.PD, 22, 10, 4, (1 << 22) if pse else None), S(L.PT, 12, 10, 4, 1 << 12))
    if mode is PagingMode.PAE:
        return (S(L.PDPT, 30, 2, 8, None), S(L.PD, 21, 9, 8, 1 << 21), S(L.PT, 12, 9, 8, 1 << 12))
    lower = (
        S(L.PDPT, 30, 9, 8, (1 << 30) if gbpages else None),
        S(L.PD, 21, 9, 8, 1 << 21),
        S(L.PT, 12, 9, 8, 1 << 12),
    )
    if mode is PagingMode.LONG4:
        return (S(L.PML4, 39, 9, 8, None), *lower)
    if mode is PagingMode.LONG5:
        return (S(L.PML5, 48, 9, 8, None), S(L.PML4, 39, 9, 8, None), *lower)
    return ()


ALL_FEATURES = ("nx", "gbpages", "la57", "pse", "pse36", "pge", "smep", "smap", "pku", "pks", "pcid")


@dataclass(frozen=True, slots=True)
class Features:
    """What the CPU supports (CPUID), which the walk and the CR-write checks consult (spec §1.1)."""

    maxphyaddr: int = 52
    nx: bool = True
    gbpages: bool = True
    la57: bool = True
    pse: bool = True
    pse36: bool = True
    pge: bool = True
    smep: bool = True
    smap: bool = True
    pku: bool = True
    pks: bool = True
    pcid: bool = True

    def __post_init__(self) -> None:
        if not 32 <= self.maxphyaddr <= 52:
            raise ValueError(f"MAXPHYADDR must be 32..52, not {self.maxphyaddr}")

    @classmethod
    def parse(cls, text: str, maxphyaddr: int = 52) -> Features:
        """``"all"``, ``"none"``, or a comma list like ``"nx,gbpages,-smap"`` (``-x`` removes x from all)."""
        names = [t.strip().lower() for t in text.split(",") if t.strip()]
        if names == ["all"] or not names:
            return cls(maxphyaddr=maxphyaddr)
        negative = all(n.startswith("-") for n in names)
        enabled = set(ALL_FEATURES) if negative else set()
        for n in names:
            if n in ("all", "none"):
                enabled = set(ALL_FEATURES) if n == "all" else set()
                continue
            bare = n.lstrip("-+")
            if bare not in ALL_FEATURES:
                raise ValueError(f"unknown CPU feature {bare!r} (known: {', '.join(ALL_FEATURES)})")
            if n.startswith("-"):
                enabled.discard(bare)
            else:
                enabled.add(bare)
        return replace(cls(maxphyaddr=maxphyaddr), **{f: f in enabled for f in ALL_FEATURES})

    def names(self) -> list[str]:
        return [f for f in ALL_FEATURES if getattr(self, f)]
