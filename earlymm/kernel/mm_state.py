"""The mm globals of arch/x86/mm/init.c and init_64.c during boot (``max_pfn_mapped``, ``pgt_buf_*``,
``page_size_mask`` …) and ``alloc_low_pages``, which hands out the final tables' pages (spec §3.8)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from earlymm.arch.addr import merge_ranges
from earlymm.hw.faults import Halt
from earlymm.kernel.consts import PAGE_SHIFT, PAGE_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import LowPageAlloc
from earlymm.kernel.memblock import Memblock

E820_RAM = 1


@dataclass
class MmState:
    """The mm globals of init.c/init_64.c (``max_pfn_mapped``, ``pgt_buf_*``, ``page_size_mask`` …)."""

    memblock: Memblock
    max_pfn: int = 0
    max_pfn_mapped: int = 0
    min_pfn_mapped: int = 0
    pgt_buf_start: int = 0
    pgt_buf_end: int = 0
    pgt_buf_top: int = 0
    can_use_brk_pgt: bool = True
    page_size_mask: int = 0
    supported_pte_mask: int = (1 << 64) - 1
    default_kernel_pte_mask: int = (1 << 64) - 1  # 6.x __default_kernel_pte_mask: what PAGE_KERNEL keeps
    pti: bool = False  # X86_FEATURE_PTI (6.x)
    brk_end: int = 0
    pfn_mapped: list[tuple[int, int]] = field(default_factory=list)
    pages_4k: int = 0
    pages_2m: int = 0
    pages_1g: int = 0
    table_pages: dict[str, int] = field(default_factory=dict)
    e820: list[tuple[int, int, int]] = field(default_factory=list)  # the kernel's copy: (addr, size, type)
    _spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict, repr=False)

    def ram_run(self, base: int, size: int, limit: int) -> int:
        """How many consecutive ``size`` blocks from ``base`` (at most ``limit``) each overlap e820 RAM: the
        entries past a range's end that the builders leave alone, counted without asking block by block."""
        spans = self._spans_of(E820_RAM)
        k = 0
        while k < limit:
            lo = base + k * size
            i = bisect.bisect_right(spans, (lo, 1 << 64)) - 1
            if i >= 0 and spans[i][1] > lo:
                end = spans[i][1]
            elif i + 1 < len(spans) and spans[i + 1][0] < lo + size:
                end = spans[i + 1][1]
            else:
                return k
            k = max(k + 1, min(limit, (end - base + size - 1) // size))
        return min(k, limit)

    def hole_run(self, base: int, size: int, limit: int) -> int:
        """How many consecutive ``size`` blocks from ``base`` (at most ``limit``) overlap no e820 RAM: the
        entries past a range's end that the builders clear (``!e820_any_mapped``), counted at once."""
        spans = self._spans_of(E820_RAM)
        i = bisect.bisect_right(spans, (base, 1 << 64)) - 1
        if i >= 0 and spans[i][1] > base:
            return 0
        nxt = spans[i + 1][0] if i + 1 < len(spans) else 1 << 64
        return min(limit, (nxt - base) // size)

    def e820_any_mapped(self, start: int, end: int, kind: int = E820_RAM) -> bool:
        """``e820_any_mapped(start, end, type)`` over the kernel's e820 (E820_RESERVED_KERN is not
        modelled): a binary search, since the builders ask once per entry past a range's end."""
        spans = self._spans_of(kind)
        i = bisect.bisect_right(spans, (start, 1 << 64)) - 1
        return (i >= 0 and spans[i][1] > start) or (i + 1 < len(spans) and spans[i + 1][0] < end)

    def _spans_of(self, kind: int) -> list[tuple[int, int]]:
        """The kernel's e820 ranges of ``kind``, merged and sorted (made on first use)."""
        spans = self._spans.get(kind)
        if spans is None:
            spans = self._spans[kind] = merge_ranges((a, a + n) for a, n, t in self.e820 if t == kind)
        return spans

    def alloc_low_page(self, ctx: KernelContext, level: str) -> int:
        """``alloc_low_pages(1)``: BRK buffer first, else memblock within the already-mapped range;
        the page is cleared through ``__va`` and its ``__va`` address returned."""
        if self.pgt_buf_end + 1 > self.pgt_buf_top or not self.can_use_brk_pgt:
            if self.min_pfn_mapped >= self.max_pfn_mapped:
                raise Halt("Kernel panic - not syncing: alloc_low_page: ran out of memory", outcome="panic")
            ret = self.memblock.find_in_range(self.min_pfn_mapped << PAGE_SHIFT, self.max_pfn_mapped << PAGE_SHIFT,
                                              PAGE_SIZE, PAGE_SIZE)
            if not ret:
                raise Halt("Kernel panic - not syncing: alloc_low_page: can not alloc memory", outcome="panic")
            self.memblock.reserve(ret, PAGE_SIZE)
            pfn, source = ret >> PAGE_SHIFT, "memblock"
        else:
            pfn, source = self.pgt_buf_end, "brk"
            self.pgt_buf_end += 1
        ctx.emit(LowPageAlloc(pfn << PAGE_SHIFT, source))
        self.table_pages[level] = self.table_pages.get(level, 0) + 1
        va = ctx.va(pfn << PAGE_SHIFT)
        ctx.memset(va, 0, PAGE_SIZE)  # clear_page(__va(pfn << PAGE_SHIFT))
        return va
