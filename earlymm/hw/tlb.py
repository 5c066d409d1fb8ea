"""The TLB (spec §1.9; SDM Vol. 3A §4.10): translations cached per PCID, global ones across PCIDs.

Entries are filled only by successful walks and keep the combined rights, so a hit is checked exactly
as the walk would have been. A write through an entry whose leaf was not yet dirty misses, because the
CPU must walk again to set D (SDM §4.8). Nothing else is cached: a stale entry after a PTE change
without INVLPG is served, as on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GLOBAL_TAG = 1 << 12  # in the key's low 13 bits: a PCID (0..4095) or "global"


@dataclass(slots=True)
class TlbEntry:
    va: int  # page base
    pa: int  # frame base
    size: int
    user_page: bool
    writable: bool
    xd: bool
    pkey: int
    dirty: bool
    global_: bool
    pcid: int


@dataclass
class TlbStats:
    hits: int = 0
    misses: int = 0
    fills: int = 0
    flushes: int = 0
    invlpgs: int = 0


@dataclass
class Tlb:
    """Keyed per page size by ``(page base << 13) | tag`` where tag is the PCID or ``GLOBAL_TAG``."""

    enabled: bool = True
    capacity: int = 1 << 16
    by_size: dict[int, dict[int, TlbEntry]] = field(default_factory=dict)
    stats: TlbStats = field(default_factory=TlbStats)

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
        """Drop every entry of ``pcid`` (and every global one) that maps ``va``, of any page size."""
        self.stats.invlpgs += 1
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
        for table in self.by_size.values():
            if include_global and pcid is None:
                table.clear()
                continue
            for key in [k for k, e in table.items()
                        if (e.global_ and include_global) or
                        (not e.global_ and (pcid is None or e.pcid == pcid))]:
                del table[key]

    def entries(self) -> list[TlbEntry]:
        return [e for t in self.by_size.values() for e in t.values()]

    def __len__(self) -> int:
        return sum(len(t) for t in self.by_size.values())
