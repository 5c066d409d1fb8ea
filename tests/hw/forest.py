"""Random page-table forests for differential tests (earlymm vs the reference, earlymm vs Unicorn).

A forest is a small pool of table frames whose entries are generated on demand along random walks:
present or not, random rights, A/D, PS, protection keys and ignored bits, table pointers back into the
pool (so tables are shared, aliased and may form loops), pointers to memory outside the pool, large-page
addresses with misaligned bits, and now and then a reserved bit. Everything is derived from one
``random.Random``, so a seed reproduces a forest exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tests.reference import bits

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63

LEVELS = {
    "32": (("pde", 22, 10), ("pte", 12, 10)),
    "pae": (("pdpte", 30, 2), ("pde", 21, 9), ("pte", 12, 9)),
    "4": (("pml4e", 39, 9), ("pdpte", 30, 9), ("pde", 21, 9), ("pte", 12, 9)),
    "5": (("pml5e", 48, 9), ("pml4e", 39, 9), ("pdpte", 30, 9), ("pde", 21, 9), ("pte", 12, 9)),
}


@dataclass
class Forest:
    mode: str
    maxphyaddr: int
    root: int  # PAE: a 32-byte aligned PDPT inside the first pool frame
    frames: dict[int, bytearray]  # pool frame address -> contents
    vas: list[int] = field(default_factory=list)
    seed: int = 0

    @property
    def esize(self) -> int:
        return 4 if self.mode == "32" else 8

    def read(self, addr: int, size: int) -> int:
        f = self.frames.get(addr & ~0xFFF)
        if f is None:
            return 0
        off = addr & 0xFFF
        return int.from_bytes(f[off:off + size], "little")

    def write(self, addr: int, size: int, value: int) -> None:
        f = self.frames[addr & ~0xFFF]
        off = addr & 0xFFF
        f[off:off + size] = value.to_bytes(size, "little")

    def pdptes(self) -> tuple[int, int, int, int]:
        r = self.read
        return (r(self.root, 8), r(self.root + 8, 8), r(self.root + 16, 8), r(self.root + 24, 8))


class ForestMaker:
    """Builds one forest; tune the probabilities through the constructor."""

    def __init__(self, rng: random.Random, mode: str, *, maxphyaddr: int = 52, pool_base: int = 0x10_0000,
                 pool_frames: int = 16, p_not_present: float = 0.12, p_rsvd: float = 0.04,
                 p_outside: float = 0.04, p_large: float = 0.3, leaf_avoid: tuple[tuple[int, int], ...] = (),
                 leaf_limit_bits: int | None = None, root_entries: dict[int, int] | None = None,
                 top_index_avoid: frozenset[int] = frozenset()) -> None:
        self.rng = rng
        self.mode = mode
        self.m = maxphyaddr
        self.pool = [pool_base + 0x1000 * i for i in range(pool_frames)]
        self.p_np, self.p_rsvd, self.p_out, self.p_large = p_not_present, p_rsvd, p_outside, p_large
        self.leaf_avoid = leaf_avoid
        self.leaf_bits = min(leaf_limit_bits or maxphyaddr, maxphyaddr)
        self.levels = LEVELS[mode]
        self.esize = 4 if mode == "32" else 8
        root = self.pool[0] + (32 * rng.randrange(128) if mode == "pae" else 0)
        self.forest = Forest(mode, maxphyaddr, root, {pa: bytearray(4096) for pa in self.pool})
        self.defined: set[int] = set()
        self.top_index_avoid = top_index_avoid
        for idx, value in (root_entries or {}).items():
            self.forest.write(root + idx * self.esize, self.esize, value)
            self.defined.add(root + idx * self.esize)

    # -- entries ---------------------------------------------------------------------------------------
    def _flags(self, name: str) -> int:
        rng = self.rng
        f = P
        f |= RW if rng.random() < 0.7 else 0
        f |= US if rng.random() < 0.75 else 0
        f |= A if rng.random() < 0.5 else 0
        f |= D if rng.random() < 0.4 else 0
        f |= rng.choice((0, PWT, PCD, G, 1 << 9, 1 << 10, 1 << 11))
        if self.mode != "32":
            f |= XD if rng.random() < 0.15 else 0
        if self.mode in ("4", "5"):
            if rng.random() < 0.3:
                f |= rng.randrange(16) << 59  # protection key (leaf) / ignored (non-leaf)
            if rng.random() < 0.1:
                f |= 1 << rng.randrange(52, 59)  # ignored bits
        return f

    def _frame_addr(self) -> int:
        rng = self.rng
        if rng.random() < self.p_out:
            if rng.random() < 0.5 or self.m >= 52:
                return rng.randrange(0x1000, 0x10_0000) & ~0xFFF  # outside the pool: reads as zero
            return (1 << rng.randrange(self.m, 52)) | rng.choice(self.pool)  # beyond MAXPHYADDR
        return rng.choice(self.pool)

    def _leaf_addr(self, size: int) -> int:
        rng = self.rng
        top = self.leaf_bits if self.mode != "32" else (min(self.leaf_bits, 40) if size == 1 << 22 else 32)
        for _ in range(100):
            pa = rng.randrange(0, 1 << top) & ~(size - 1)
            if rng.random() < 0.15:
                pa = rng.choice(self.pool) & ~(size - 1)  # a table frame used as data
            if not any(lo < pa + size and pa < hi for lo, hi in self.leaf_avoid):
                return pa
        raise RuntimeError("could not place a leaf outside the avoided ranges")

    def _reserved_bit(self, name: str, large: bool) -> int:
        rng = self.rng
        choices = []
        if self.mode == "32":
            return (1 << 21) if large else 0
        hi = 62 if self.mode == "pae" else 51
        if self.m <= hi:
            choices.append(1 << rng.randrange(self.m, hi + 1))
        if large:
            choices.append(1 << rng.randrange(13, 21 if name == "pde" else 30))
        return rng.choice(choices) if choices else 0

    def entry(self, name: str) -> int:
        rng = self.rng
        if rng.random() < self.p_np:
            return rng.getrandbits(self.esize * 8) & ~P  # not present: everything else ignored
        if self.mode == "pae" and name == "pdpte":
            # Held in the PDPTE registers: reserved bits would fault the CR3 load, so there are none.
            return rng.choice(self.pool) | P | rng.choice((0, PWT, PCD))
        f = self._flags(name)
        large = False
        if name in ("pde", "pdpte") and not (self.mode == "pae" and name == "pdpte"):
            large = rng.random() < self.p_large
        if name in ("pml4e", "pml5e") and rng.random() < 0.03:
            f |= PS  # reserved
        if large:
            f |= PS
            size = {"pde": 1 << (22 if self.mode == "32" else 21), "pdpte": 1 << 30}[name]
            pa = self._leaf_addr(size)
            if self.mode == "32":
                e = (pa & 0xFFC0_0000) | (((pa >> 32) & 0xFF) << 13) | (f & 0xFFFF_FFFF)
            else:
                e = pa | f | (rng.choice((0, 1 << 12)))  # bit 12: PAT of a large page
        elif name == "pte":
            e = self._leaf_addr(1 << 12) | f
        else:
            e = self._frame_addr() | f
        if self.mode == "32":
            e &= 0xFFFF_FFFF
        if rng.random() < self.p_rsvd:
            e |= self._reserved_bit(name, large)
        return e

    # -- walks -----------------------------------------------------------------------------------------
    def _next_table(self, e: int, name: str) -> int | None:
        """Where a walk would continue after a present non-leaf entry (None: stop)."""
        if not e & P:
            return None
        if name == "pte" or (name in ("pde", "pdpte") and e & PS and not (self.mode == "pae" and name == "pdpte")):
            return None
        addr = e & (0xFFFF_F000 if self.mode == "32" else bits(51, 12))
        return addr if addr in self.forest.frames else None

    def populate(self, va: int) -> None:
        table: int | None = self.forest.root
        for name, shift, nbits in self.levels:
            if table is None:
                return
            ea = table + ((va >> shift) & ((1 << nbits) - 1)) * self.esize
            if ea not in self.defined:
                self.defined.add(ea)
                self.forest.write(ea, self.esize, self.entry(name))
            table = self._next_table(self.forest.read(ea, self.esize), name)

    def random_va(self) -> int:
        rng = self.rng
        va = 0
        for i, (_, shift, nbits) in enumerate(self.levels):
            while True:
                idx = rng.choice((0, 1, 2, 3, 4, 5, (1 << nbits) - 1, rng.randrange(1 << nbits)))
                if i or idx not in self.top_index_avoid:
                    break
            va |= idx << shift
        va |= rng.randrange(4096)
        if self.mode in ("4", "5"):
            width = 48 if self.mode == "4" else 57
            if rng.random() < 0.03:
                return noncanonical(rng, width)
            if va >> (width - 1) & 1:
                va |= ((1 << 64) - 1) ^ ((1 << width) - 1)  # sign-extend
        return va

    def make(self, n_vas: int) -> Forest:
        vas = []
        for _ in range(n_vas):
            va = self.random_va()
            self.populate(va)
            vas.append(va)
        self.forest.vas = vas
        return self.forest


def make_forest(seed: int, mode: str, n_vas: int = 24, **kw: object) -> Forest:
    f = ForestMaker(random.Random(seed), mode, **kw).make(n_vas)  # type: ignore[arg-type]
    f.seed = seed
    return f


def noncanonical(rng: random.Random, width: int) -> int:
    """A 64-bit address whose bits 63:width-1 are not all equal."""
    while True:
        va = rng.getrandbits(64)
        top = va >> (width - 1)
        if top not in (0, (1 << (65 - width)) - 1):
            return va
