"""One page-table page as a builder loop of init_64.c walks it, read and written in runs.

Linux's ``phys_pmd_init`` & co. read an entry, maybe store it, and move to the next. Where nothing else
touches memory in between, the page's translation cannot change between those accesses — no fault, no
pool reset, no TLB flush can come between them — so reading the rest of the page in one access and
handing a run of stores to ``pv_ops`` at once (``set_entries``) makes exactly the accesses' faults and
the same bytes as the entry-at-a-time loop, at a fraction of the simulator's cost (a 64 TiB boot with
2 MiB pages writes 32 million entries). Only the MMU's TLB hit counter sees the difference.

The caller must ``sync()`` before anything else accesses memory (a lower level's loop, an allocation):
pending stores are issued in order and the next read is a fresh access, as in the source.

The entries read are kept as the bytes the access returned (copied on the first store into them): the
questions the loops ask of a run — how many entries are zero, how many are present large leaves — are
then byte-string operations in C (a comparison with zeros; ``translate`` + ``find`` over the entries' low
bytes), which a 5-level 4 PiB boot asks 67,718 times, once per ``phys_pud_init`` call.
"""

from __future__ import annotations

import struct
from array import array

from earlymm.arch.addr import VirtAddr
from earlymm.kernel.context import KernelContext
from earlymm.kernel.paravirt.ops import SetOp, entry_bytes

_STRUCT = {8: struct.Struct("<Q"), 4: struct.Struct("<I")}
# Low byte of an entry (P is bit 0, PS bit 7) → 0 for a present large leaf, 1 otherwise.
_NOT_LARGE = bytes(0 if b & 0x81 == 0x81 else 1 for b in range(256))


class TableRun:
    __slots__ = ("cache", "cache_end", "cache_from", "cpu", "fmt", "mmu", "op", "page", "pending", "size", "start")

    def __init__(self, ctx: KernelContext, page: int) -> None:
        self.cpu, self.mmu = ctx.cpu, ctx.pv.mmu
        self.page = page
        self.size = ctx.pgt.entry_size
        self.fmt = _STRUCT[self.size]
        self.cache: bytes | bytearray = b""  # raw entries cache_from..cache_end, as the table holds them
        self.cache_from = self.cache_end = -1
        self.op: SetOp | None = None
        self.start = 0
        self.pending: array[int] = array("Q")  # the values of the queued stores, entries start, start + 1, …

    def ptr(self, i: int) -> VirtAddr:
        return VirtAddr(self.page + self.size * i)

    def _load(self, i: int) -> int:
        """Byte offset of entry ``i`` in the cache, reading the rest of the page from ``i`` when it is stale."""
        if not self.cache_from <= i < self.cache_end:
            if self.pending:
                self._issue()
            n = 4096 // self.size - i
            self.cache = self.cpu.read(self.page + self.size * i, n * self.size)
            self.cache_from, self.cache_end = i, i + n
        return (i - self.cache_from) * self.size

    def val(self, i: int) -> int:
        """``pXd_val(*entry)`` of entry ``i``."""
        at = self._load(i)  # first: it may replace the cache
        return self.mmu.entry_val(self.fmt.unpack_from(self.cache, at)[0])

    def zero_run(self, i: int, limit: int) -> int:
        """How many entries from ``i`` on (at most ``limit``) read as none (a zero entry is none under
        every backend: ``pXd_val(0) == 0``)."""
        at = self._load(i)
        seg = self.cache[at:at + limit * self.size]
        if seg == bytes(len(seg)):  # a fresh table: one memcmp (stripping 4 KiB of zeros takes 30 times longer)
            return len(seg) // self.size
        return (len(seg) - len(seg.lstrip(b"\0"))) // self.size  # leading zero bytes, in whole entries

    def large_run(self, i: int, limit: int) -> int:
        """How many entries from ``i`` on (at most ``limit``) are present large leaves (P and PS)."""
        at = self._load(i)
        low = self.cache[at:at + limit * self.size:self.size]  # each entry's low byte (little-endian)
        bad = low.translate(_NOT_LARGE).find(1)
        return len(low) if bad < 0 else bad

    def _writable(self) -> bytearray:
        if not isinstance(self.cache, bytearray):
            self.cache = bytearray(self.cache)
        return self.cache

    def set(self, op: SetOp, i: int, val: int) -> None:
        """Queue ``op(entry i, val)`` (``val`` already ``make_*``-converted)."""
        if self.op is not op or i != self.start + len(self.pending):
            self._issue()
            self.op, self.start = op, i
        self.pending.append(val)
        if self.cache_from <= i < self.cache_end:
            self.fmt.pack_into(self._writable(), (i - self.cache_from) * self.size, val)

    def set_many(self, op: SetOp, i: int, vals: array[int]) -> None:
        """Queue ``op`` on entries ``i``, ``i + 1``, … (the fast path for a run of new leaves)."""
        if self.op is not op or i != self.start + len(self.pending):
            self._issue()
            self.op, self.start = op, i
        self.pending.extend(vals)
        lo, hi = max(i, self.cache_from), min(i + len(vals), self.cache_end)
        if lo < hi:
            s, at = self.size, self.cache_from
            self._writable()[(lo - at) * s:(hi - at) * s] = entry_bytes(vals[lo - i:hi - i], s)

    def _issue(self) -> None:
        if self.op is not None and self.pending:
            self.mmu.set_entries(self.op, self.ptr(self.start), self.pending)
        self.op, self.pending = None, array("Q")

    def sync(self) -> None:
        """Issue pending stores; the next read is a fresh access (something else is about to run)."""
        if self.pending:
            self._issue()
        self.cache, self.cache_from, self.cache_end = b"", -1, -1
