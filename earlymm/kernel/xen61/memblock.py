"""memblock as ``init_mem_mapping`` meets it on the Xen PV path (mm/memblock.c @ v6.1): the RAM of the
kernel's e820 table and the reservations made before, and the top-down range allocator
(``memblock_phys_alloc_range`` → ``memblock_find_in_range_node`` → ``__memblock_find_range_top_down``).

Differences: only the reservations that setup_arch makes before ``init_mem_mapping`` on this path are
kept (first 64 KiB, the kernel image to ``_end``, BRK, the initrd, ``start_info``, the bootstrap tables,
the p2m list, the extra (balloon) pfns); no node or mirror flags; ranges are plain (start, end) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(r for r in ranges if r[0] < r[1]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


@dataclass
class Memblock:
    memory: list[tuple[int, int]] = field(default_factory=list)
    reserved: list[tuple[int, int]] = field(default_factory=list)

    def add(self, base: int, size: int) -> None:
        self.memory = _merge([*self.memory, (base, base + size)])

    def reserve(self, base: int, size: int) -> None:
        self.reserved = _merge([*self.reserved, (base, base + size)])

    def free(self, base: int, size: int) -> None:
        end, out = base + size, []
        for s, e in self.reserved:
            if e <= base or s >= end:
                out.append((s, e))
                continue
            if s < base:
                out.append((s, base))
            if e > end:
                out.append((end, e))
        self.reserved = out

    def free_ranges(self) -> list[tuple[int, int]]:
        """Memory minus reserved, ascending (``for_each_free_mem_range``)."""
        out: list[tuple[int, int]] = []
        for s, e in self.memory:
            cur = s
            for rs, re in self.reserved:
                if re <= cur or rs >= e:
                    continue
                if rs > cur:
                    out.append((cur, rs))
                cur = max(cur, re)
            if cur < e:
                out.append((cur, e))
        return out

    def alloc_range(self, size: int, align: int, start: int, end: int) -> int:
        """``memblock_phys_alloc_range``: the highest aligned free block in [start, end), reserved; 0 if none
        (start is raised to one page: memblock never hands out address 0)."""
        start = max(start, 4096)
        for s, e in reversed(self.free_ranges()):
            s, e = max(s, start), min(e, end)
            if e < size:
                continue
            cand = (e - size) & ~(align - 1)
            if cand >= s:
                self.reserve(cand, size)
                return cand
        return 0
