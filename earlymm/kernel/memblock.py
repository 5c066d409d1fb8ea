"""``memblock``: the boot-time physical memory allocator (mm/memblock.c), top-down as in v3.9.

Its bookkeeping is ordinary kernel data; the model keeps it in Python (page tables are what must be
bytes). ``memory`` comes from e820 RAM; ``reserved`` from the kernel, the ramdisk, firmware areas and
every allocation.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from earlymm.arch.addr import merge_ranges


def _add(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    if start < end:
        ranges[:] = merge_ranges([*ranges, (start, end)])


@dataclass
class Memblock:
    """``memblock``: the memory and reserved regions, and the allocation limit."""

    memory: list[tuple[int, int]] = field(default_factory=list)
    reserved: list[tuple[int, int]] = field(default_factory=list)
    current_limit: int = (1 << 64) - 1

    def add(self, base: int, size: int) -> None:
        _add(self.memory, base, base + size)

    def reserve(self, base: int, size: int) -> None:
        _add(self.reserved, base, base + size)

    def find_in_range(self, start: int, end: int, size: int, align: int) -> int:
        """``memblock_find_in_range``, top-down: the highest ``align``-ed free block of ``size`` in
        [start, end) (memory minus reserved); 0 if none. Both lists are sorted and disjoint, so the search
        walks down from ``end`` and stops at the first fit."""
        end = min(end, self.current_limit)
        mem, res = self.memory, self.reserved
        for ms, me in reversed(mem[:bisect.bisect_left(mem, (end, 0))]):
            if me <= start:
                break
            lo, hi = max(ms, start), min(me, end)
            top, j = hi, bisect.bisect_left(res, (hi, 0)) - 1
            while top > lo:
                while j >= 0 and res[j][0] >= top:
                    j -= 1
                gap_lo = max(lo, res[j][1]) if j >= 0 else lo
                cand = (top - size) & ~(align - 1)
                if gap_lo < top and cand >= gap_lo:
                    return cand
                if j < 0:
                    break
                top = min(top, res[j][0])
                j -= 1
        return 0

    def is_region_memory(self, base: int, size: int) -> bool:
        """``memblock_is_region_memory``: [base, base+size) lies inside one memory region."""
        i = bisect.bisect_right(self.memory, (base, 1 << 64)) - 1
        return i >= 0 and self.memory[i][0] <= base and base + size <= self.memory[i][1]

    def trim_memory(self, align: int) -> None:
        """``memblock_trim_memory``: round every memory region inward to ``align``; drop what vanishes."""
        out = [((s + align - 1) & ~(align - 1), e & ~(align - 1)) for s, e in self.memory]
        self.memory = [(s, e) for s, e in out if s < e]

    def mem_ranges(self) -> list[tuple[int, int]]:
        return list(self.memory)
