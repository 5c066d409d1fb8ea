"""The boot-time allocator of 2.6.21 (mm/bootmem.c): one bit per low-memory page, 1 = reserved, kept in
a bitmap the kernel places right after head.S's page tables (``init_bootmem(min_low_pfn, max_low_pfn)``).

The bitmap is kernel data in simulated memory, read and written at its kernel virtual address through
the MMU — which is why head.S maps INIT_MAP_BEYOND_END (128 KiB) past its own tables: a bitmap reaching
beyond that would fault here. Node 0 starts at pfn 0 (``node_boot_start`` 0).
"""

from __future__ import annotations

from earlymm.hw.faults import Halt
from earlymm.kernel.i386.consts import PAGE_SHIFT, PAGE_SIZE
from earlymm.kernel.i386.context import I386Context
from earlymm.kernel.i386.events import BootmemAlloc


def pfn_up(addr: int) -> int:
    return (addr + PAGE_SIZE - 1) >> PAGE_SHIFT


def pfn_down(addr: int) -> int:
    return addr >> PAGE_SHIFT


class Bootmem:
    """``bootmem_data_t`` of node 0: the bitmap at ``map_va`` covering pfns [0, ``low_pfn``)."""

    def __init__(self, ctx: I386Context, map_va: int, low_pfn: int) -> None:
        self.ctx = ctx
        self.map_va = map_va
        self.low_pfn = low_pfn
        self.mapsize = ((low_pfn + 7) // 8 + 3) & ~3  # get_mapsize(): bytes, rounded to a long

    def _bug(self, what: str) -> None:
        msg = f"kernel BUG at mm/bootmem.c: {what}"
        self.ctx.print(msg)
        raise Halt(msg, outcome="oops", console="\n".join(self.ctx.console))

    def _update(self, sidx: int, eidx: int, value: bool, expect: bool | None) -> None:
        """test_and_set_bit / test_and_clear_bit for bits [sidx, eidx): one read and one write of the bytes
        they live in; ``expect`` is the state each bit must have had (BUG otherwise)."""
        if sidx >= eidx:
            return
        lo, hi = sidx // 8, (eidx + 7) // 8
        data = bytearray(self.ctx.cpu.read(self.map_va + lo, hi - lo))
        for i in range(sidx, eidx):
            byte, bit = i // 8 - lo, 1 << (i % 8)
            if expect is not None and bool(data[byte] & bit) != expect:
                self._bug(f"page {i:#x} was {'free' if expect else 'reserved'} already")
            data[byte] = data[byte] | bit if value else data[byte] & ~bit
        self.ctx.cpu.write(self.map_va + lo, bytes(data))

    def free(self, addr: int, size: int) -> None:
        """``free_bootmem``: pages wholly inside [addr, addr+size) become free."""
        if pfn_down(addr + size) > self.low_pfn:
            self._bug(f"free_bootmem({addr:#x}, {size:#x}) beyond node_low_pfn {self.low_pfn:#x}")
        self._update(pfn_up(addr), pfn_down(addr + size), False, True)

    def reserve(self, addr: int, size: int) -> None:
        """``reserve_bootmem``: pages touching [addr, addr+size) become reserved (twice is harmless)."""
        if pfn_down(addr) >= self.low_pfn or pfn_down(addr + size) > self.low_pfn:
            self._bug(f"reserve_bootmem({addr:#x}, {size:#x}) beyond node_low_pfn {self.low_pfn:#x}")
        self._update(pfn_down(addr), pfn_up(addr + size), True, None)

    def alloc_low(self, size: int, purpose: str) -> int:
        """``__alloc_bootmem_low(size, align, goal 0)`` for whole pages: the lowest free run of pages
        (goal 0 means ``preferred`` 0, and a page-sized request never merges with a partial page), marked
        reserved and zeroed through ``__va`` (``memset(ret, 0, size)``). Returns the physical address;
        no room is a panic, as ``alloc_bootmem_low_pages`` panics."""
        pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
        bitmap = self.ctx.cpu.read(self.map_va, self.mapsize)
        start = run = 0
        for i in range(self.low_pfn):
            if bitmap[i // 8] >> (i % 8) & 1:
                run = 0
                continue
            if run == 0:
                start = i
            run += 1
            if run == pages:
                break
        else:
            msg = f"Kernel panic - not syncing: Out of low memory ({purpose}: {size} bytes)"
            self.ctx.print(msg)
            raise Halt(msg, outcome="panic", console="\n".join(self.ctx.console))
        self._update(start, start + pages, True, False)
        pa = start << PAGE_SHIFT
        self.ctx.memset(self.ctx.va(pa), 0, size)
        self.ctx.emit(BootmemAlloc(pa, purpose))
        return pa
