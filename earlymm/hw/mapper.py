"""A page-table builder in the spirit of the Rust ``x86_64`` crate's ``Mapper``: map and unmap ranges
with a chosen page size and flags, in any paging mode, taking table pages from a frame allocator.

It writes physical memory directly (it is a test and scenario tool, not guest code): the simulated
kernel builds its own tables through the MMU instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from earlymm.arch.entry import addr_mask
from earlymm.arch.flags import PteFlag
from earlymm.arch.modes import Level, LevelSpec, PagingMode, level_specs
from earlymm.hw.memory import PhysMem

P, RW, US, PS = int(PteFlag.P), int(PteFlag.RW), int(PteFlag.US), int(PteFlag.PS)


@dataclass
class FrameAllocator:
    """Hands out zeroed 4 KiB frames from ``[next, end)``."""

    mem: PhysMem
    next: int
    end: int

    def alloc(self) -> int:
        if self.next + 4096 > self.end:
            raise MemoryError(f"frame allocator exhausted at {self.next:#x}")
        pa = self.next
        self.next += 4096
        self.mem.fill(pa, 4096, 0)
        return pa


class Mapper:
    """Maps ``va → pa`` in the table tree rooted at ``root`` (allocated if not given).

    ``table_flags`` are written into every non-leaf entry it creates (default P|RW|US, so that the
    leaf alone decides the rights); PAE PDPTEs get P only, since their bits 2:1 are reserved.
    """

    def __init__(self, mem: PhysMem, mode: PagingMode, alloc: FrameAllocator, root: int | None = None,
                 *, table_flags: int = P | RW | US, maxphyaddr: int = 52) -> None:
        if mode is PagingMode.DISABLED:
            raise ValueError("no page tables without paging")
        self.mem, self.mode, self.alloc = mem, mode, alloc
        self.specs = level_specs(mode, gbpages=True, pse=True)
        self.table_flags = table_flags
        self.maxphyaddr = maxphyaddr
        # Entries are read through the memory's table view (a live view of a written frame), not byte reads.
        self.tables, self.eshift = (mem.tables4, 2) if mode is PagingMode.LEGACY32 else (mem.tables8, 3)
        self.root = root if root is not None else alloc.alloc()
        # Per level, what ``entry_addr`` needs, computed once: a boot's loader maps thousands of pages.
        pae_pdpt = [mode is PagingMode.PAE and s.level is Level.PDPT for s in self.specs]
        self._steps = [(s.shift, s.index_mask, s.entry_size, s.level, P if pdpt else table_flags,
                        s.level not in (Level.PML4, Level.PML5) and not pdpt,  # may PS make this entry a leaf?
                        addr_mask(mode, s.level, False, maxphyaddr))
                       for s, pdpt in zip(self.specs, pae_pdpt, strict=True)]
        self._leaf_specs: dict[int, LevelSpec] = {}
        for s in self.specs:
            if s.leaf_size:
                self._leaf_specs.setdefault(s.leaf_size, s)

    def _read(self, addr: int, size: int) -> int:
        return self.mem.read_int(addr, size)

    def _write(self, addr: int, size: int, value: int) -> None:
        self.mem.write_int(addr, size, value)

    def entry_addr(self, va: int, level: Level, *, create: bool = False) -> int | None:
        """Address of the entry for ``va`` at ``level``, creating missing tables above it if asked."""
        table = self.root
        tables, eshift = self.tables, self.eshift
        for shift, index_mask, size, lvl, flags, ps_matters, table_mask in self._steps:
            ea = table + ((va >> shift) & index_mask) * size
            if lvl is level:
                return ea
            e = tables[ea & -4096][(ea & 4095) >> eshift]
            if not e & P:
                if not create:
                    return None
                new = self.alloc.alloc()
                self._write(ea, size, new | flags)
                e = new | flags
            elif ps_matters and e & PS:
                raise ValueError(f"{va:#x}: a large page at {lvl.entry_name} is in the way")
            table = e & table_mask
        raise ValueError(f"level {level.name} does not exist in {self.mode.value} paging")

    def _leaf_spec(self, va: int, pa: int, page_size: int) -> LevelSpec:
        spec = self._leaf_specs.get(page_size)
        if spec is None:
            raise ValueError(f"{self.mode.value} paging has no {page_size:#x}-byte pages")
        if va % page_size or pa % page_size:
            raise ValueError(f"va {va:#x} / pa {pa:#x} not aligned to {page_size:#x}")
        return spec

    def _leaf_value(self, spec: LevelSpec, pa: int, flags: int) -> int:
        if spec.level is Level.PT:
            return pa | flags | P
        if self.mode is PagingMode.LEGACY32:  # a 4 MiB PDE holds PA bits 39:32 in bits 20:13
            return (pa & 0xFFC0_0000) | ((pa >> 32) & 0xFF) << 13 | flags | P | PS
        return pa | flags | P | PS

    def map_page(self, va: int, pa: int, page_size: int = 4096, flags: int = RW) -> int:
        """Map one page; returns the address of the leaf entry written."""
        spec = self._leaf_spec(va, pa, page_size)
        ea = self.entry_addr(va, spec.level, create=True)
        assert ea is not None
        self._write(ea, spec.entry_size, self._leaf_value(spec, pa, flags))
        return ea

    def map(self, va: int, pa: int, size: int, flags: int = RW, page_size: int = 4096) -> None:
        """Map ``[va, va + size)`` to ``pa`` onwards with pages of ``page_size``: the entries ``map_page``
        would write one by one, written as one run per table (a loader's 4 GiB identity map is 2,048)."""
        spec = self._leaf_spec(va, pa, page_size)
        n, k = -(-size // page_size), 0
        fmt = "<{}Q" if spec.entry_size == 8 else "<{}I"
        while k < n:
            ea = self.entry_addr(va + k * page_size, spec.level, create=True)
            assert ea is not None
            m = min(n - k, (4096 - (ea & 0xFFF)) // spec.entry_size)  # entries left in this table
            vals = [self._leaf_value(spec, pa + (k + j) * page_size, flags) for j in range(m)]
            self.mem.write(ea, struct.pack(fmt.format(m), *vals))
            k += m

    def unmap_page(self, va: int, page_size: int = 4096) -> None:
        spec = next(s for s in self.specs if s.leaf_size == page_size)
        ea = self.entry_addr(va, spec.level)
        if ea is not None:
            self._write(ea, spec.entry_size, 0)

    def set_entry(self, va: int, level: Level, value: int) -> int:
        """Write a raw entry value (tests use it for reserved bits, aliasing, cycles)."""
        ea = self.entry_addr(va, level, create=True)
        assert ea is not None
        size = 4 if self.mode is PagingMode.LEGACY32 else 8
        self._write(ea, size, value)
        return ea

    def get_entry(self, va: int, level: Level) -> int | None:
        ea = self.entry_addr(va, level)
        return None if ea is None else self._read(ea, 4 if self.mode is PagingMode.LEGACY32 else 8)
