"""``memblock``: the boot-time physical memory allocator (mm/memblock.c), top-down as in v3.9.

Its bookkeeping is ordinary kernel data; the model keeps it in Python (page tables are what must be
bytes). ``memory`` comes from e820 RAM; ``reserved`` from the kernel, the ramdisk, firmware areas and
every allocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earlymm.arch.addr import merge_ranges


def _add(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    if start < end:
        ranges[:] = merge_ranges([*ranges, (start, end)])


@dataclass
class Memblock:
    memory: list[tuple[int, int]] = field(default_factory=list)
    reserved: list[tuple[int, int]] = field(default_factory=list)
    current_limit: int = (1 << 64) - 1

    def add(self, base: int, size: int) -> None:
        _add(self.memory, base, base + size)

    def reserve(self, base: int, size: int) -> None:
        _add(self.reserved, base, base + size)

    def free_ranges_topdown(self, start: int, end: int) -> list[tuple[int, int]]:
        """Free (memory minus reserved) ranges clamped to [start, end), highest first."""
        out: list[tuple[int, int]] = []
        for ms, me in self.memory:
            lo, hi = max(ms, start), min(me, end)
            if lo >= hi:
                continue
            cur = lo
            for rs, re in self.reserved:
                if re <= cur or rs >= hi:
                    continue
                if rs > cur:
                    out.append((cur, rs))
                cur = max(cur, re)
            if cur < hi:
                out.append((cur, hi))
        return sorted(out, reverse=True)

    def find_in_range(self, start: int, end: int, size: int, align: int) -> int:
        """``memblock_find_in_range``: the highest ``align``-ed free block of ``size``; 0 if none."""
        end = min(end, self.current_limit)
        for lo, hi in self.free_ranges_topdown(start, end):
            cand = (hi - size) & ~(align - 1)
            if cand >= lo and cand + size <= hi:
                return cand
        return 0

    def is_region_memory(self, base: int, size: int) -> bool:
        """``memblock_is_region_memory``: [base, base+size) lies inside one memory region."""
        return any(s <= base and base + size <= e for s, e in self.memory)

    def trim_memory(self, align: int) -> None:
        """``memblock_trim_memory``: round every memory region inward to ``align``; drop what vanishes."""
        out = [((s + align - 1) & ~(align - 1), e & ~(align - 1)) for s, e in self.memory]
        self.memory = [(s, e) for s, e in out if s < e]

    def mem_ranges(self) -> list[tuple[int, int]]:
        return list(self.memory)
