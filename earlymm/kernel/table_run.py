"""One page-table page as a builder loop of init_64.c walks it, read and written in runs.

Linux's ``phys_pmd_init`` & co. read an entry, maybe store it, and move to the next. Where nothing else
touches memory in between, the page's translation cannot change between those accesses — no fault, no
pool reset, no TLB flush can come between them — so reading the rest of the page in one access and
handing a run of stores to ``pv_ops`` at once (``set_entries``) makes exactly the accesses' faults and
the same bytes as the entry-at-a-time loop, at a fraction of the simulator's cost (a 64 TiB boot with
2 MiB pages writes 32 million entries). Only the MMU's TLB hit counter sees the difference.

The caller must ``sync()`` before anything else accesses memory (a lower level's loop, an allocation):
pending stores are issued in order and the next read is a fresh access, as in the source.
"""

from __future__ import annotations

import numpy as np

from earlymm.arch.addr import VirtAddr
from earlymm.kernel.context import KernelContext
from earlymm.kernel.paravirt.ops import SetOp

_EMPTY = np.zeros(0, dtype=np.uint64)


class TableRun:
    def __init__(self, ctx: KernelContext, page: int) -> None:
        self.ctx = ctx
        self.page = page
        self.size = ctx.pgt.entry_size
        self.dtype = np.dtype("<u8" if self.size == 8 else "<u4")
        self.cache = _EMPTY  # raw entries (as the table holds them) from cache_from on
        self.cache_from = -1
        self.op: SetOp | None = None
        self.start = 0
        self.chunks: list[np.ndarray] = []
        self.scalars: list[int] = []  # single stores not yet gathered into a chunk
        self.count = 0

    def ptr(self, i: int) -> VirtAddr:
        return VirtAddr(self.page + self.size * i)

    def _load(self, i: int) -> int:
        """Offset of entry ``i`` in the cache, reading the rest of the page from ``i`` when it is stale."""
        if not self.cache_from <= i < self.cache_from + len(self.cache):
            self.sync()
            n = 4096 // self.size - i
            raw = self.ctx.cpu.read(self.ptr(i), n * self.size)
            self.cache = np.frombuffer(raw, dtype=self.dtype).astype(np.uint64)
            self.cache_from = i
        return i - self.cache_from

    def val(self, i: int) -> int:
        """``pXd_val(*entry)`` of entry ``i``."""
        at = self._load(i)  # first: it may replace the cache
        return self.ctx.pv.mmu.entry_val(int(self.cache[at]))

    def zero_run(self, i: int, limit: int) -> int:
        """How many entries from ``i`` on (at most ``limit``) read as none (a zero entry is none under
        every backend: ``pXd_val(0) == 0``)."""
        at = self._load(i)
        seg = self.cache[at:at + limit]
        nz = np.flatnonzero(seg)
        return int(nz[0]) if nz.size else len(seg)

    def large_run(self, i: int, limit: int) -> int:
        """How many entries from ``i`` on (at most ``limit``) are present large leaves (P and PS)."""
        at = self._load(i)
        seg = self.cache[at:at + limit]
        bad = np.flatnonzero((seg & np.uint64(0x81)) != np.uint64(0x81))
        return int(bad[0]) if bad.size else len(seg)

    def set(self, op: SetOp, i: int, val: int) -> None:
        """Queue ``op(entry i, val)`` (``val`` already ``make_*``-converted)."""
        if self.op is not op or i != self.start + self.count:
            self._issue()
            self.op, self.start = op, i
        self.scalars.append(val)
        self.count += 1
        if self.cache_from <= i < self.cache_from + len(self.cache):
            self.cache[i - self.cache_from] = val

    def set_many(self, op: SetOp, i: int, vals: np.ndarray) -> None:
        """Queue ``op`` on entries ``i``, ``i + 1``, … (the fast path for a run of new leaves)."""
        if self.op is not op or i != self.start + self.count:
            self._issue()
            self.op, self.start = op, i
        self._flush_scalars()
        self.chunks.append(vals)
        self.count += len(vals)
        lo, hi = max(i, self.cache_from), min(i + len(vals), self.cache_from + len(self.cache))
        if lo < hi:
            self.cache[lo - self.cache_from:hi - self.cache_from] = vals[lo - i:hi - i]

    def _flush_scalars(self) -> None:
        if self.scalars:
            self.chunks.append(np.array(self.scalars, dtype=np.uint64))
            self.scalars = []

    def _issue(self) -> None:
        self._flush_scalars()
        if self.op is not None and self.count:
            vals = self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
            self.ctx.pv.mmu.set_entries(self.op, self.ptr(self.start), vals)
        self.op, self.chunks, self.count = None, [], 0

    def sync(self) -> None:
        """Issue pending stores; the next read is a fresh access (something else is about to run)."""
        self._issue()
        self.cache, self.cache_from = _EMPTY, -1
