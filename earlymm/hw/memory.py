"""Simulated physical memory: sparse 4 KiB frames over the whole 52-bit physical space.

Everything that holds physical memory — the simulated machine, a QEMU core, a raw image — offers the
same read interface, ``FrameSource.frame(pfn)``: a 4096-byte buffer, or ``None`` for a hole. The walker
reads page-table entries straight out of those buffers, so memory use grows with pages touched and
never with address magnitude.

``PhysMem`` layers copy-on-write frames over an optional read-only backing (an image), so A/D updates
made while translating against a dump stay in memory and the file is never modified.
"""

from __future__ import annotations

import enum
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

from earlymm.arch.addr import PAGE_SHIFT, PAGE_SIZE, merge_ranges

MAX_PHYS_BITS = 52
MAX_PA = 1 << MAX_PHYS_BITS

Buffer = bytes | bytearray | memoryview

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FMT = {1: _U8, 2: _U16, 4: _U32, 8: _U64}
ZERO_FRAME = bytes(PAGE_SIZE)
# Read-only tables whose entries a ``TableEntries`` keeps as tuples; past this it starts afresh, so a
# walk over a huge image holds at most this many (a tuple of 512 big entries is about 20 KiB).
TABLE_CACHE_LIMIT = 2048
_ZERO_ENTRIES = {512: (0,) * 512, 1024: (0,) * 1024}


class MemoryHole(Exception):
    """A read touched physical memory that the backing store does not hold."""

    def __init__(self, pa: int) -> None:
        super().__init__(f"physical address {pa:#x} is not in the memory image")
        self.pa = pa


class FrameSource(Protocol):
    """Anything that can hand out 4 KiB physical frames: simulated RAM, a QEMU core, a raw image."""

    def frame(self, pfn: int) -> Buffer | None:
        """The 4096 bytes of frame ``pfn``, or ``None`` if the source does not hold it (a hole)."""
        ...

    def ranges(self) -> list[tuple[int, int]]:
        """Sorted, merged ``[start, end)`` physical ranges the source holds."""
        ...


class RegionType(enum.Enum):
    """e820-style classification of a physical range."""

    RAM = "ram"
    RESERVED = "reserved"
    ACPI = "acpi"
    NVS = "nvs"
    UNUSABLE = "unusable"
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class Region:
    """One e820 range ``[start, end)`` of one kind."""

    start: int
    end: int  # exclusive
    kind: RegionType


class RegionMap:
    """An e820-like map; ranges not listed are ``ABSENT``. Overlaps are rejected.

    Kept sorted by start: building from many regions sorts once and compares neighbours, adding one
    bisects, and a lookup bisects, so a map of 100,000 ranges costs O(n log n) to build.
    """

    def __init__(self, regions: Iterable[Region] = ()) -> None:
        ordered = sorted(regions, key=lambda r: (r.start, r.end))
        for r in ordered:
            _check_bounds(r)
        for a, b in pairwise(ordered):
            if b.start < a.end:
                raise ValueError(_overlap(b, a))
        self._regions: list[Region] = ordered
        self._starts = [r.start for r in ordered]

    def add(self, region: Region) -> None:
        _check_bounds(region)
        i = bisect_right(self._starts, region.start)
        for j in (i - 1, i):
            if 0 <= j < len(self._regions):
                r = self._regions[j]
                if region.start < r.end and r.start < region.end:
                    raise ValueError(_overlap(region, r))
        self._regions.insert(i, region)
        self._starts.insert(i, region.start)

    def __iter__(self) -> Iterator[Region]:
        return iter(self._regions)

    def __len__(self) -> int:
        return len(self._regions)

    def kind(self, pa: int) -> RegionType:
        i = bisect_right(self._starts, pa) - 1
        if i >= 0 and pa < self._regions[i].end:
            return self._regions[i].kind
        return RegionType.ABSENT

    def ram(self) -> list[Region]:
        return [r for r in self._regions if r.kind is RegionType.RAM]

    def top_of_ram(self) -> int:
        return max((r.end for r in self.ram()), default=0)


def _check_bounds(region: Region) -> None:
    if not 0 <= region.start < region.end <= MAX_PA:
        raise ValueError(f"bad region [{region.start:#x}, {region.end:#x})")


def _overlap(a: Region, b: Region) -> str:
    return f"region [{a.start:#x}, {a.end:#x}) overlaps [{b.start:#x}, {b.end:#x})"


class TableEntries(dict[int, Sequence[int]]):
    """Page tables by physical address, as sequences of entries, for the specialised walker
    (``earlymm.hw.fastwalk``): ``tables[addr][index]`` is one entry.

    A frame nobody can write (image-backed or absent-as-zero, never copied on write) is read once into a
    tuple of ints, because indexing a tuple is several times cheaper than unpacking an entry from a
    ``memoryview``; a writable frame is served as its live ``memoryview``, so it is never stale. A hole
    raises ``MemoryHole``. ``PhysMem.writable_frame`` drops a tuple when its frame becomes writable.
    """

    __slots__ = ("_load", "_on_clear")

    def __init__(self, load: Callable[[int], Sequence[int] | None], on_clear: Callable[[], None]) -> None:
        super().__init__()
        self._load = load
        self._on_clear = on_clear

    def __missing__(self, addr: int) -> Sequence[int]:
        entries = self._load(addr)
        if entries is None:
            raise MemoryHole(addr)
        if len(self) >= TABLE_CACHE_LIMIT:
            self.clear()
            self._on_clear()
        self[addr] = entries
        return entries


class PhysMem:
    """Sparse physical memory with typed little-endian accessors.

    Frames never written read from ``backing`` if there is one; frames neither written nor backed read
    as zeros when ``absent_zero`` (what QEMU and Unicorn do for unassigned memory), else as holes.
    """

    def __init__(self, backing: FrameSource | None = None, *, absent_zero: bool = True,
                 regions: RegionMap | None = None) -> None:
        self.backing = backing
        self.absent_zero = absent_zero
        self.regions = regions if regions is not None else RegionMap()
        self.frames: dict[int, bytearray] = {}
        # Every frame handed out so far (written, backed or zero), keyed by pfn: lets the walker read a
        # table with one dict lookup. Backed frames are read-only, so this never goes stale; a write
        # replaces the entry with the writable copy.
        self.view: dict[int, Buffer] = {}
        # The same frames seen as arrays of 8-byte and 4-byte little-endian entries, for the walker.
        self.view8: dict[int, memoryview] = {}
        self.view4: dict[int, memoryview] = {}
        self.tables8 = TableEntries(self._table8, self.drop_derived)
        self.tables4 = TableEntries(self._table4, self.drop_derived)
        # Caches built from read-only tables (the specialised walker's VA-prefix caches): emptied when a
        # table they may hold becomes writable, or when the table cache starts afresh.
        self.derived: list[dict[int, dict[int, Any]]] = []
        # Anything the specialised walker keeps per memory (its compiled walkers, by plan).
        self.walkers: dict[object, Any] = {}
        self.writes = 0

    # -- frame level -------------------------------------------------------------------------------
    def frame(self, pfn: int) -> Buffer | None:
        v = self.view.get(pfn)
        if v is not None:
            return v
        b = self.backing.frame(pfn) if self.backing is not None else None
        if b is None:
            if not self.absent_zero:
                return None
            b = ZERO_FRAME
        self.view[pfn] = b
        return b

    def entries8(self, pfn: int) -> memoryview | None:
        """Frame ``pfn`` as 512 little-endian u64 entries (None for a hole)."""
        v = self.view8.get(pfn)
        if v is None:
            f = self.frame(pfn)
            if f is None:
                return None
            v = self.view8[pfn] = memoryview(f).cast("B").cast("Q")
        return v

    def entries4(self, pfn: int) -> memoryview | None:
        """Frame ``pfn`` as 1024 little-endian u32 entries (None for a hole)."""
        v = self.view4.get(pfn)
        if v is None:
            f = self.frame(pfn)
            if f is None:
                return None
            v = self.view4[pfn] = memoryview(f).cast("B").cast("I")
        return v

    def _table8(self, addr: int) -> Sequence[int] | None:
        return self._table(addr >> PAGE_SHIFT, self.entries8(addr >> PAGE_SHIFT))

    def _table4(self, addr: int) -> Sequence[int] | None:
        return self._table(addr >> PAGE_SHIFT, self.entries4(addr >> PAGE_SHIFT))

    def _table(self, pfn: int, v: memoryview | None) -> Sequence[int] | None:
        if v is None or pfn in self.frames:
            return v
        if self.view.get(pfn) is ZERO_FRAME:
            return _ZERO_ENTRIES[len(v)]
        return tuple(v.tolist())

    def drop_derived(self) -> None:
        """Empty every cache built from read-only tables."""
        for by_root in self.derived:
            for cache in by_root.values():
                cache.clear()

    def ranges(self) -> list[tuple[int, int]]:
        spans = [(p << PAGE_SHIFT, (p + 1) << PAGE_SHIFT) for p in self.frames]
        if self.backing is not None:
            spans.extend(self.backing.ranges())
        return merge_ranges(spans)

    def writable_frame(self, pfn: int) -> bytearray:
        f = self.frames.get(pfn)
        if f is None:
            if not 0 <= pfn < MAX_PA >> PAGE_SHIFT:
                raise ValueError(f"pfn {pfn:#x} beyond the 52-bit physical space")
            src = self.backing.frame(pfn) if self.backing is not None else None
            if src is None and self.backing is not None and not self.absent_zero:
                raise MemoryHole(pfn << PAGE_SHIFT)
            f = bytearray(src) if src is not None else bytearray(PAGE_SIZE)
            self.frames[pfn] = f
            self.view[pfn] = f
            self.view8.pop(pfn, None)
            self.view4.pop(pfn, None)
            # A table read as a tuple is now writable: serve the live frame, forget what was built on it.
            addr = pfn << PAGE_SHIFT
            dropped = self.tables8.pop(addr, None), self.tables4.pop(addr, None)
            if dropped != (None, None):
                self.drop_derived()
        return f

    def written_pfns(self) -> list[int]:
        return sorted(self.frames)

    def is_hole(self, pa: int) -> bool:
        return self.frame(pa >> PAGE_SHIFT) is None

    # -- byte level --------------------------------------------------------------------------------
    def read(self, pa: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            off = pa & (PAGE_SIZE - 1)
            n = min(size, PAGE_SIZE - off)
            f = self.frame(pa >> PAGE_SHIFT)
            if f is None:
                raise MemoryHole(pa)
            out += f[off:off + n]
            pa += n
            size -= n
        return bytes(out)

    def write(self, pa: int, data: Buffer) -> None:
        data = memoryview(data).cast("B")
        pos = 0
        while pos < len(data):
            off = pa & (PAGE_SIZE - 1)
            n = min(len(data) - pos, PAGE_SIZE - off)
            self.writable_frame(pa >> PAGE_SHIFT)[off:off + n] = data[pos:pos + n]
            pa += n
            pos += n
        self.writes += 1

    def read_int(self, pa: int, size: int) -> int:
        fmt = _FMT[size]
        off = pa & (PAGE_SIZE - 1)
        if off + size <= PAGE_SIZE:
            f = self.view.get(pa >> PAGE_SHIFT) or self.frame(pa >> PAGE_SHIFT)  # a frame is never empty
            if f is None:
                raise MemoryHole(pa)
            return int(fmt.unpack_from(f, off)[0])
        return int.from_bytes(self.read(pa, size), "little")

    def write_int(self, pa: int, size: int, value: int) -> None:
        fmt = _FMT[size]
        value &= (1 << (8 * size)) - 1
        off = pa & (PAGE_SIZE - 1)
        if off + size <= PAGE_SIZE:
            fmt.pack_into(self.frames.get(pa >> PAGE_SHIFT) or self.writable_frame(pa >> PAGE_SHIFT), off, value)
            self.writes += 1
        else:
            self.write(pa, value.to_bytes(size, "little"))

    def read_u8(self, pa: int) -> int:
        return self.read_int(pa, 1)

    def read_u16(self, pa: int) -> int:
        return self.read_int(pa, 2)

    def read_u32(self, pa: int) -> int:
        return self.read_int(pa, 4)

    def read_u64(self, pa: int) -> int:
        return self.read_int(pa, 8)

    def write_u8(self, pa: int, v: int) -> None:
        self.write_int(pa, 1, v)

    def write_u16(self, pa: int, v: int) -> None:
        self.write_int(pa, 2, v)

    def write_u32(self, pa: int, v: int) -> None:
        self.write_int(pa, 4, v)

    def write_u64(self, pa: int, v: int) -> None:
        self.write_int(pa, 8, v)

    def fill(self, pa: int, size: int, byte: int = 0) -> None:
        """Fill ``size`` bytes; zero-filling frames that were never written still materialises them."""
        self.write(pa, bytes([byte]) * size)
