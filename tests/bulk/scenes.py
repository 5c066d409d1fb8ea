"""Random page-table scenes built with ``earlymm.hw.mapper.Mapper``, then vandalised with ``set_entry``.

A scene maps clusters of 4 KiB / large pages with random rights, protection keys and XD (through
several mappers sharing one root, so upper tables differ in RW/US/XD too), then rewrites entries:
reserved bits, not-present garbage, aliases (one table reached from two entries with different rights),
loops (an entry pointing back at the root or at its own table), pointers beyond MAXPHYADDR and into
frames the memory does not hold. The addresses probed are page bases, ends, random offsets, neighbours
of mapped pages, random and non-canonical addresses. A seed reproduces a scene exactly.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

from earlymm.arch.modes import Features, Level
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import MemoryHole, PhysMem
from tests.hw.matrix_support import PMODE

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63
VA_BITS = {"32": 32, "pae": 32, "4": 48, "5": 57}
SIZES = {"32": (1 << 12, 1 << 22), "pae": (1 << 12, 1 << 21), "4": (1 << 12, 1 << 21, 1 << 30),
         "5": (1 << 12, 1 << 21, 1 << 30)}
LEVELS = {"32": (Level.PD, Level.PT), "pae": (Level.PDPT, Level.PD, Level.PT),
          "4": (Level.PML4, Level.PDPT, Level.PD, Level.PT),
          "5": (Level.PML5, Level.PML4, Level.PDPT, Level.PD, Level.PT)}
HOLE_BASE = 0x8000_0000  # never written: a hole when the memory does not read absent frames as zero


@dataclass
class Scene:
    mode: str
    mem: PhysMem
    root: int
    features: Features
    vas: list[int]
    seed: int

    @property
    def pdptes(self) -> tuple[int, ...]:
        if self.mode != "pae":
            return ()
        return tuple(self.mem.read_u64(self.root + 8 * i) for i in range(4))


def canonical(va: int, mode: str) -> int:
    w = VA_BITS[mode]
    va &= (1 << w) - 1
    if mode in ("4", "5") and va >> (w - 1):
        va |= ((1 << 64) - 1) ^ ((1 << w) - 1)
    return va


def noncanonical(rng: random.Random, mode: str) -> int:
    w = VA_BITS[mode]
    while True:
        va = rng.getrandbits(64)
        if va >> (w - 1) not in (0, (1 << (65 - w)) - 1):
            return va


class SceneMaker:
    def __init__(self, seed: int, mode: str) -> None:
        self.rng = rng = random.Random(seed)
        self.seed, self.mode = seed, mode
        self.m = rng.choice((36, 40, 46, 52))
        self.features = Features(maxphyaddr=self.m, gbpages=rng.random() < 0.7, pse36=rng.random() < 0.7)
        self.mem = PhysMem(absent_zero=rng.random() < 0.5)
        self.alloc = FrameAllocator(self.mem, 0x10_0000, 0x100_0000)
        self.pmode = PMODE[mode]
        first = Mapper(self.mem, self.pmode, self.alloc, maxphyaddr=self.m)
        self.root = first.root
        self.mappers = [first] + [Mapper(self.mem, self.pmode, self.alloc, self.root, maxphyaddr=self.m,
                                         table_flags=self._table_flags()) for _ in range(3)]
        self.mapped: list[tuple[int, int]] = []  # (va, size)
        self.vas: list[int] = []

    def _table_flags(self) -> int:
        f = P | (RW if self.rng.random() < 0.6 else 0) | (US if self.rng.random() < 0.6 else 0)
        if self.mode != "32" and self.rng.random() < 0.3:
            f |= XD
        return f | self.rng.choice((0, A, PWT, PCD, 1 << 9))

    def _leaf_flags(self) -> int:
        rng = self.rng
        f = (RW if rng.random() < 0.6 else 0) | (US if rng.random() < 0.6 else 0)
        f |= rng.choice((0, A, A | D, G, PWT, PCD, 1 << 11))
        if self.mode != "32" and rng.random() < 0.25:
            f |= XD
        if self.mode in ("4", "5") and rng.random() < 0.5:
            f |= rng.randrange(16) << 59  # protection key
        return f

    def _pa(self, size: int) -> int:
        top = self.m
        if self.mode == "32":
            top = min(self.m, 40) if size == 1 << 22 and self.features.pse36 else 32
        if self.rng.random() < 0.05:
            top = 52 if self.mode != "32" else top  # maybe beyond MAXPHYADDR: reserved bits
        return self.rng.randrange(0, 1 << top) & -size

    def map_cluster(self) -> None:
        rng, mode = self.rng, self.mode
        size = rng.choice(SIZES[mode])
        base = canonical(rng.getrandbits(VA_BITS[mode]) & -size, mode)
        mapper = rng.choice(self.mappers)
        for k in range(rng.choice((1, 2, 3, 8))):
            va = canonical(base + k * size * rng.choice((1, 1, 2, 512)), mode)
            try:
                mapper.map_page(va, self._pa(size), size, self._leaf_flags())
            except ValueError:  # a large page is in the way, or the address wrapped
                continue
            self.mapped.append((va, size))

    def _entry_of(self, va: int, level: Level) -> int | None:
        try:
            return self.mappers[0].get_entry(va, level)
        except (ValueError, MemoryHole):  # an earlier edit sent the path through a large page or a hole
            return None

    def _set(self, va: int, level: Level, value: int) -> None:
        with contextlib.suppress(ValueError, MemoryHole):  # the path crosses a large page or a hole
            self.mappers[0].set_entry(va, level, value)

    def vandalise(self) -> None:
        rng, mode, levels = self.rng, self.mode, LEVELS[self.mode]
        esize_bits = 32 if mode == "32" else 64
        for _ in range(rng.randrange(2, 8)):
            va, _size = rng.choice(self.mapped)
            level = rng.choice(levels)
            e = self._entry_of(va, level)
            what = rng.randrange(7)
            if e is None or (mode == "pae" and level is Level.PDPT and what not in (1, 3)):
                continue
            if what == 0:  # a reserved bit somewhere in 12..62 (which are reserved depends on level/leaf/M)
                self._set(va, level, e | 1 << rng.randrange(12, 63 if esize_bits == 64 else 32))
            elif what == 1:  # not present, other bits garbage
                self._set(va, level, rng.getrandbits(esize_bits) & ~P)
            elif what == 2 and level is not Level.PT:  # PS flipped: a table read as a page or vice versa
                self._set(va, level, e ^ PS)
            elif what == 3 and level is not Level.PT:  # alias: another entry points at this entry's table
                other, _ = rng.choice(self.mapped)
                self._set(other, level, (e & ~(PS | XD | RW | US)) | self._table_flags())
            elif what == 4 and level is not Level.PT:  # loop: back to the root, or to this very table
                target = self.root if rng.random() < 0.5 else self._table_of(va, level)
                self._set(va, level, (target & ~0xFFF) | self._table_flags())
            elif what == 5 and level is not Level.PT:  # into memory the image does not hold
                self._set(va, level, HOLE_BASE + 0x1000 * rng.randrange(4) | P | RW | US)
            elif what == 6 and level is not Level.PT and mode != "32" and self.m < 52:  # beyond MAXPHYADDR
                self._set(va, level, e | 1 << rng.randrange(self.m, 52))

    def _table_of(self, va: int, level: Level) -> int:
        try:
            ea = self.mappers[0].entry_addr(va, level)
        except (ValueError, MemoryHole):
            ea = None
        return (ea or self.root) & ~0xFFF

    def probes(self, n_random: int) -> list[int]:
        rng, mode = self.rng, self.mode
        vas = []
        for va, size in self.mapped:
            vas += [va, va + size - 1, va + rng.randrange(size), va - 1, va + size]
        for _ in range(n_random):
            vas.append(canonical(rng.getrandbits(64), mode))
        if mode in ("4", "5"):
            vas += [noncanonical(rng, mode) for _ in range(8)]
            w = VA_BITS[mode]
            vas += [(1 << (w - 1)) - 1, 1 << (w - 1), (1 << 64) - (1 << (w - 1)), (1 << 64) - (1 << (w - 1)) - 1]
        return [v & ((1 << 64) - 1) for v in vas]

    def make(self, clusters: int = 12, n_random: int = 24) -> Scene:
        for _ in range(clusters):
            self.map_cluster()
        if self.mapped:
            self.vandalise()
        return Scene(self.mode, self.mem, self.root, self.features, self.probes(n_random), self.seed)


def make_scene(seed: int, mode: str, clusters: int = 12, n_random: int = 24) -> Scene:
    return SceneMaker(seed, mode).make(clusters, n_random)
