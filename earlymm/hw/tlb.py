"""The TLB and the paging-structure caches (spec §1.9; SDM Vol. 3A §4.10): translations cached per
PCID, global ones across PCIDs; and, for IA-32e paging, the upper-level entries (PML5E/PML4E/PDPTE/PDE
pointing at a table) a walk used, so a later walk may start below the root.

TLB entries are filled only by successful walks and keep the combined rights, so a hit is checked exactly
as the walk would have been. Paging-structure-cache entries are never global; INVLPG and CR3 writes
drop all of them for the PCID (SDM §4.10.4.1), a #PF those for the faulting address. A write through
an entry whose leaf was not yet dirty misses, because the CPU must walk again to set D (SDM §4.8).
Nothing else is cached: a stale entry after a PTE change without INVLPG is served, as on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GLOBAL_TAG = 1 << 12  # in the key's low 13 bits: a PCID (0..4095) or "global"


@dataclass(slots=True)
class TlbEntry:
    """A cached translation: page base to frame base, with the walk's combined rights."""

    va: int  # page base
    pa: int  # frame base
    size: int
    acc: int  # the walk's rights accumulator (WalkResult.acc): the rights are derived from it
    pkey: int
    dirty: bool
    global_: bool
    pcid: int

    @property
    def user_page(self) -> bool:
        return self.acc & 4 != 0

    @property
    def writable(self) -> bool:
        return self.acc & 2 != 0

    @property
    def xd(self) -> bool:
        return not self.acc >> 63


@dataclass(slots=True)
class PscEntry:
    """A cached upper-level entry: the table it points to and the rights combined down to it."""

    table: int
    acc: int  # AND of the entries above with bit 63 inverted, as the walk accumulates it
    pcid: int


@dataclass
class TlbStats:
    """Counters of TLB and paging-structure-cache activity."""

    hits: int = 0
    misses: int = 0
    fills: int = 0
    flushes: int = 0
    invlpgs: int = 0
    psc_hits: int = 0


@dataclass
class Tlb:
    """Keyed per page size by ``(page base << 13) | tag`` where tag is the PCID or ``GLOBAL_TAG``."""

    enabled: bool = True
    capacity: int = 1 << 16
    by_size: dict[int, dict[int, TlbEntry]] = field(default_factory=dict)
    stats: TlbStats = field(default_factory=TlbStats)
    psc_enabled: bool = True
    # level index of the table pointed to -> (VA bits above the pointing entry's shift << 13 | PCID) -> entry
    psc: dict[int, dict[int, PscEntry]] = field(default_factory=dict)

    def psc_lookup(self, key_of: list[tuple[int, int]], pcid: int) -> tuple[int, PscEntry] | None:
        """``key_of``: (level index, VA prefix) from the deepest level up; the first cached one wins."""
        for li, prefix in key_of:
            table = self.psc.get(li)
            if table:
                e = table.get((prefix << 13) | pcid)
                if e is not None:
                    self.stats.psc_hits += 1
                    return li, e
        return None

    def psc_fill(self, li: int, prefix: int, e: PscEntry) -> None:
        if self.enabled and self.psc_enabled:
            table = self.psc.setdefault(li, {})
            if len(table) >= self.capacity:
                table.clear()
            table[(prefix << 13) | e.pcid] = e

    def psc_drop(self, pcid: int | None, prefixes: list[tuple[int, int]] | None = None) -> None:
        """Drop paging-structure-cache entries of ``pcid`` (all PCIDs if None), or only those keyed by
        ``prefixes`` ((level index, VA prefix) pairs)."""
        if prefixes is not None and pcid is not None:
            for li, prefix in prefixes:
                self.psc.get(li, {}).pop((prefix << 13) | pcid, None)
            return
        for table in self.psc.values():
            if pcid is None:
                table.clear()
            else:
                for k in [k for k, e in table.items() if e.pcid == pcid]:
                    del table[k]

    def lookup(self, va: int, pcid: int, pge: bool) -> TlbEntry | None:
        for size, table in self.by_size.items():
            base = va & -size
            e = table.get((base << 13) | pcid)
            if e is None and pge:
                e = table.get((base << 13) | GLOBAL_TAG)
            if e is not None:
                self.stats.hits += 1
                return e
        self.stats.misses += 1
        return None

    def fill(self, e: TlbEntry) -> None:
        if not self.enabled:
            return
        table = self.by_size.setdefault(e.size, {})
        if len(table) >= self.capacity:
            table.clear()  # a real TLB evicts; evicting everything is a legal (if crude) policy
        tag = GLOBAL_TAG if e.global_ else e.pcid
        table[(e.va << 13) | tag] = e
        self.stats.fills += 1

    def invlpg(self, va: int, pcid: int) -> int:
        """INVLPG: drop every TLB entry of ``pcid`` (and every global one) that maps ``va``, of any page
        size, and all of the PCID's paging-structure-cache entries."""
        self.stats.invlpgs += 1
        self.psc_drop(pcid)
        return self.invlpg_tlb_only(va, pcid)

    def invlpg_tlb_only(self, va: int, pcid: int) -> int:
        n = 0
        for size, table in self.by_size.items():
            base = va & -size
            for tag in (pcid, GLOBAL_TAG):
                if table.pop((base << 13) | tag, None) is not None:
                    n += 1
        return n

    def flush(self, *, include_global: bool, pcid: int | None = None) -> None:
        """Flush non-global entries (of ``pcid`` if given, else of all PCIDs), plus globals if asked."""
        self.stats.flushes += 1
        self.psc_drop(pcid)
        for table in self.by_size.values():
            if include_global and pcid is None:
                table.clear()
                continue
            for key in [k for k, e in table.items()
                        if (e.global_ and include_global) or
                        (not e.global_ and (pcid is None or e.pcid == pcid))]:
                del table[key]

    def psc_entries(self) -> list[PscEntry]:
        return [e for t in self.psc.values() for e in t.values()]

    def entries(self) -> list[TlbEntry]:
        return [e for t in self.by_size.values() for e in t.values()]

    def __len__(self) -> int:
        return sum(len(t) for t in self.by_size.values())
