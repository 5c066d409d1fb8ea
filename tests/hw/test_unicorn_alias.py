"""Self-referencing page tables against QEMU's walker, level by level (issue 9 item 3).

Forests here are built to make one walk use the same entry at several levels: one to three table
frames, two to four "hot" indices per frame, every entry of a hot index pointing back into those
frames (often its own), and addresses whose index repeats from one level to the next. A PML4 entry
then serves as PDPTE, PDE and PTE of one walk; a PDPTE with PS=1 read as a PML4E is a reserved-bit
fault but read through the self-map it is a 1 GiB leaf; a PDE doubles as the PTE. Entries start mostly
without A, so the first use of an entry stores A and a later level of the same walk must see it.

The oracle is ``TracingUnicornMmu`` (tests/unicorn_trace.py): the pool is MMIO, so every entry QEMU
reads (with the value it read) and every A/D store it makes arrive in order. Per access the tests
compare, on top of the outcome, error code, CR2, physical address and the pool bytes afterwards:

* each level of earlymm's walk (``WalkResult.path``: entry address and the value the CPU saw) with
  QEMU's read at that level, and
* earlymm's ``ad_updates`` (address, old, new, in order) with QEMU's stores,

through the public ``Mmu`` API in two ways: the TLB off with the pool restored after every access
("walk"), and the default TLB and paging-structure caches with A/D accumulating over a random sequence
of accesses ("sequence": TLB hits must store nothing, PSC-shortened walks must match QEMU's last
levels). Whatever walker the ``Mmu`` uses is what is tested.

QEMU behaviour that is not architectural, by name (see test_unicorn_diff.py):
``QEMU_1G_LEAF_ACCESSED_EARLY`` — QEMU stores A in a 1 GiB PDPTE leaf right after reading it, before the
leaf's reserved-bit, rights and key checks, so a faulting walk there still sets it, and a write that
succeeds stores A and then A|D (two stores where the model, like the SDM's one locked update, has one).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

pytest.importorskip("unicorn")

from earlymm.arch.modes import Features
from earlymm.hw.mmu import Mmu
from earlymm.hw.regs import ControlRegs
from earlymm.hw.tlb import Tlb
from earlymm.hw.walk import OK, PF, WalkResult
from tests import reference as ref
from tests.hw.unicorn_support import compare_outcome, load_model_memory, outcome_key, pool_diff
from tests.unicorn_harness import HARNESS_INDEX, MAXPHYADDR, control_registers, harness_root_entry
from tests.unicorn_trace import TracingUnicornMmu, WalkTrace

POOL_BASE = 0x10_0000
POOL_FRAMES = 16
P, RW, US, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
XD = 1 << 63
KIND = ("read", "write", "exec")


@pytest.fixture(scope="module")
def unicorn() -> TracingUnicornMmu:
    return TracingUnicornMmu(POOL_BASE, POOL_FRAMES)


# -- forests in which walks meet themselves --------------------------------------------------------------


@dataclass
class AliasForest:
    mode: str
    pool: bytes
    vas: list[int]


def _entry(rng: random.Random, tables: list[int]) -> int:
    if rng.random() < 0.08:
        return rng.getrandbits(64) & ~P  # not present: the rest is ignored
    f = P | (RW if rng.random() < 0.7 else 0) | (US if rng.random() < 0.7 else 0)
    f |= (A if rng.random() < 0.3 else 0) | (D if rng.random() < 0.3 else 0) | (XD if rng.random() < 0.1 else 0)
    f |= rng.choice((0, 0x8, 0x10, 0x100, 0x200, 0x800))  # PWT, PCD, G, ignored
    if rng.random() < 0.3:
        f |= rng.randrange(16) << 59  # a leaf's protection key, ignored in a table pointer
    if rng.random() < 0.15:
        f |= PS
        # A large page outside the pool (1 GiB aligned, or only 2 MiB aligned), or a pool frame
        # (bits 20:12 set: reserved in a 2 MiB or 1 GiB leaf); a 4 KiB page when read as a PTE.
        addr = rng.choice((0x4000_0000 * rng.randint(1, 3), 0x4000_0000 * rng.randint(1, 3),
                           0x4000_0000 + (rng.randrange(1, 8) << 21), rng.choice(tables)))
        f |= rng.choice((0, 1 << 12))
    elif rng.random() < 0.9:
        addr = rng.choice(tables)
    else:
        addr = POOL_BASE + 0x1000 * rng.randrange(len(tables), POOL_FRAMES)  # an empty table
    if rng.random() < 0.04:
        f |= 1 << rng.randrange(MAXPHYADDR, 52)  # reserved: above MAXPHYADDR
    return addr | f


def _va(rng: random.Random, mode: str, hot: list[int]) -> int:
    n = 4 if mode == "4" else 5
    idx = [rng.choice(hot)]
    for _ in range(n - 1):
        idx.append(idx[-1] if rng.random() < 0.5 else rng.choice(hot))
    va = rng.randrange(0x1000)
    for k, i in enumerate(idx):
        va |= i << (12 + 9 * (n - 1 - k))
    width = 48 if mode == "4" else 57
    if va >> (width - 1) & 1:
        va |= ((1 << 64) - 1) ^ ((1 << width) - 1)
    return va


def make_alias_forest(seed: int, mode: str, n_vas: int) -> AliasForest:
    rng = random.Random(seed * 1009 + int(mode))
    pool = bytearray(POOL_FRAMES * 0x1000)
    tables = [POOL_BASE + 0x1000 * i for i in range(rng.randint(1, 3))]  # tables[0] is the root
    hot = rng.sample([i for i in range(511) if i != HARNESS_INDEX], rng.randint(2, 4))
    for t in tables:
        for i in hot:
            struct.pack_into("<Q", pool, t - POOL_BASE + 8 * i, _entry(rng, tables))
    struct.pack_into("<Q", pool, 8 * HARNESS_INDEX, harness_root_entry(mode))
    return AliasForest(mode, bytes(pool), [_va(rng, mode, hot) for _ in range(n_vas)])


# -- what QEMU must have done, given earlymm's walk ------------------------------------------------------


def expected_stores(mode: str, r: WalkResult, nxe: bool) -> list[tuple[int, int, int]]:
    """earlymm's ``ad_updates`` as QEMU makes them: the same, except QEMU_1G_LEAF_ACCESSED_EARLY."""
    ups = [(u.addr, u.old, u.new) for u in r.ad_updates or []]
    n = len(r.path) // 2
    if not n or r.first + n - 1 != (1 if mode == "4" else 2) or r.outcome not in (OK, PF):
        return ups
    e = r.path[-1]
    early_rsvd = ref.bits(51, MAXPHYADDR) | (0 if nxe else XD)
    if not e & P or not e & PS or e & early_rsvd or e & A:
        return ups
    addr = r.path[-2] + ((r.va >> 30) & 0x1FF) * 8
    if r.outcome == PF:
        return [*ups, (addr, e, e | A)]
    assert ups and ups[-1][:2] == (addr, e), f"no leaf update for the 1 GiB leaf at {addr:#x}: {ups}"
    last = ups.pop()
    return [*ups, (addr, e, e | A), *([(addr, e | A, last[2])] if last[2] != e | A else [])]


def trace_diff(mode: str, r: WalkResult, trace: WalkTrace, nxe: bool, tally: Tally) -> str | None:
    """None if QEMU read what earlymm's levels say, at each level, and stored what its updates say."""
    problems = []
    stores = [(w.addr, w.old, w.new) for w in trace.writes]
    want = expected_stores(mode, r, nxe)
    if stores != want:
        problems.append("stores: unicorn " + _fmt(stores) + ", expected " + _fmt(want))
    tally.stores += len(stores)
    n = len(r.path) // 2
    if n:
        reads = trace.reads
        total = r.first + n
        mine = [(_entry_addr(mode, r, i), r.path[2 * i + 1]) for i in range(n)]
        theirs = [(x.addr, x.value) for x in reads[r.first:total]]
        tally.levels += len(mine)
        if mine != theirs:
            problems.append("levels: unicorn read " + _fmt(theirs) + ", earlymm saw " + _fmt(mine))
        rest = reads[total:]
        if any(x.addr != reads[k % total].addr for k, x in enumerate(rest)) or len(rest) % total:
            problems.append(f"after the walk QEMU read {[hex(x.addr) for x in rest]}")
    return "; ".join(problems) or None


def _entry_addr(mode: str, r: WalkResult, i: int) -> int:
    n_levels = 4 if mode == "4" else 5
    shift = 12 + 9 * (n_levels - 1 - (r.first + i))
    return r.path[2 * i] + ((r.va >> shift) & 0x1FF) * 8


def _fmt(items: Sequence[tuple[int, ...]]) -> str:
    return "[" + ", ".join("(" + " ".join(hex(v) for v in t) + ")" for t in items) + "]"


# -- running forests -------------------------------------------------------------------------------------


@dataclass
class Tally:
    compared: int = 0
    levels: int = 0  # levels compared with QEMU's reads
    stores: int = 0  # A/D stores compared
    aliased: int = 0  # walks that read one entry at two or more levels
    saw_own_a: int = 0  # … of which a later level saw an A this walk stored
    tlb_hits: int = 0
    psc_walks: int = 0
    quirk_1g: int = 0  # accesses where QEMU_1G_LEAF_ACCESSED_EARLY changed the expected stores
    ok_sizes: dict[int, int] = field(default_factory=dict)  # page size of successful walks
    fault_levels: dict[int, int] = field(default_factory=dict)  # level index (root 0) where a #PF stopped
    by_outcome: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _count_alias(mode: str, r: WalkResult, t: Tally) -> None:
    addrs = [_entry_addr(mode, r, i) for i in range(len(r.path) // 2)]
    if len(set(addrs)) < len(addrs):
        t.aliased += 1
        ups = r.ad_updates or []
        if any(u.addr == a for k, a in enumerate(addrs) for u in ups[:k] if u.new & A and not u.old & A):
            t.saw_own_a += 1


def run_forest(um: TracingUnicornMmu, seed: int, mode: str, *, n_vas: int, n_env: int, sequence: bool,
               tally: Tally) -> None:
    forest = make_alias_forest(seed, mode, n_vas)
    rng = random.Random(seed * 31 + (1 if sequence else 0))
    pfns = [(POOL_BASE >> 12) + i for i in range(POOL_FRAMES)]
    for _ in range(n_env):
        wp, nxe, smep, smap = (rng.random() < 0.5 for _ in range(4))
        pke = rng.random() < 0.3
        pkru = rng.getrandbits(32) & rng.getrandbits(32) if pke else 0
        cr0, cr4, efer = control_registers(mode, wp=wp, nxe=nxe, smep=smep, smap=smap, pke=pke)
        mem = load_model_memory({POOL_BASE + 0x1000 * i: bytearray(forest.pool[0x1000 * i:0x1000 * (i + 1)])
                                 for i in range(POOL_FRAMES)})
        regs = ControlRegs()
        regs.cr0, regs.cr4, regs.efer, regs.cr3, regs.pkru = cr0, cr4, efer, POOL_BASE, pkru
        mmu = Mmu(mem, regs, Features(maxphyaddr=MAXPHYADDR), Tlb() if sequence else Tlb(enabled=False))
        um.write_pool(forest.pool)
        accesses = [(va, kind, user) for va in forest.vas for kind in (0, 1, 2) for user in (False, True)]
        if sequence:
            accesses = [rng.choice(accesses) for _ in range(len(accesses))]
        for va, kind, user in accesses:
            ac = not user and rng.random() < 0.5
            name = (f"seed={seed} {mode}-level {'sequence' if sequence else 'walk'} va={va:#x} "
                    f"{'user' if user else 'supervisor'} {KIND[kind]} cr0.wp={int(wp)} efer.nxe={int(nxe)} "
                    f"cr4.smep={int(smep)} cr4.smap={int(smap)} eflags.ac={int(ac)}"
                    + (f" pkru={pkru:#x}" if pke else ""))
            r = mmu.translate(va, kind, user, False, ac)
            al = mem.read_u8(r.pa) if r.outcome == OK and kind == 1 else 0x5A  # store what is there
            u = um.access(cr0=cr0, cr4=cr4, efer=efer, cr3=POOL_BASE, va=va, kind=kind, user=user, ac=ac,
                          pkru=pkru if pke else None, al=al)
            tally.compared += 1
            key = outcome_key(u)
            tally.by_outcome[key] = tally.by_outcome.get(key, 0) + 1
            tally.tlb_hits += r.outcome == OK and not r.path
            if r.outcome == OK:
                tally.ok_sizes[r.page_size] = tally.ok_sizes.get(r.page_size, 0) + 1
            elif r.outcome == PF and r.path:
                at = r.first + len(r.path) // 2 - 1
                tally.fault_levels[at] = tally.fault_levels.get(at, 0) + 1
            tally.quirk_1g += expected_stores(mode, r, nxe) != [(x.addr, x.old, x.new) for x in r.ad_updates or []]
            tally.psc_walks += r.first > 0
            _count_alias(mode, r, tally)
            # QEMU's extra A (the named quirk) goes into earlymm's memory too, so that a sequence goes on
            # from the same tables on both sides; it is compared like every other store first.
            quirk = expected_stores(mode, r, nxe)[len(r.ad_updates or []):] if r.outcome == PF else []
            for addr, _old, new in quirk:
                mem.write_u64(addr, new)
            model_pool = b"".join(bytes(mem.frames[p]) for p in pfns)
            problems = [compare_outcome(u, r.outcome, r.pa, r.error_code, va),
                        trace_diff(mode, r, um.trace, nxe, tally),
                        pool_diff(um.read_pool(), model_pool, POOL_BASE)]
            msg = "; ".join(p for p in problems if p)
            if msg:
                tally.failures.append(f"{name}: {msg}")
                if not sequence:
                    continue
                # Carry on from QEMU's state so that one difference is reported once.
                for i, p in enumerate(pfns):
                    mem.frames[p][:] = um.read_pool()[0x1000 * i:0x1000 * (i + 1)]
                mmu.tlb.flush(include_global=True)
            if not sequence:
                um.write_pool(forest.pool)
                for i, p in enumerate(pfns):
                    mem.frames[p][:] = forest.pool[0x1000 * i:0x1000 * (i + 1)]


def run_many(um: TracingUnicornMmu, seeds: range, *, n_vas: int, n_env: int) -> Tally:
    t = Tally()
    for seed in seeds:
        for mode in ("4", "5"):
            for sequence in (False, True):
                run_forest(um, seed, mode, n_vas=n_vas, n_env=n_env, sequence=sequence, tally=t)
    return t


def summary(t: Tally) -> str:
    return (f"{len(t.failures)} of {t.compared} accesses disagree with Unicorn ({t.levels} levels and {t.stores} "
            f"stores compared; {t.aliased} aliased walks, {t.saw_own_a} seeing their own A; {t.tlb_hits} TLB hits, "
            f"{t.psc_walks} PSC walks, 1 GiB quirk {t.quirk_1g}x; outcomes {dict(sorted(t.by_outcome.items()))}, "
            f"page sizes {dict(sorted(t.ok_sizes.items()))}, #PF at levels {dict(sorted(t.fault_levels.items()))}):\n  "
            + "\n  ".join(t.failures[:15]))


def check(t: Tally, min_compared: int) -> None:
    assert not t.failures, summary(t)
    assert t.compared >= min_compared, summary(t)
    assert t.aliased > t.compared // 10 and t.saw_own_a > t.compared // 50, summary(t)
    assert {"ok", "#PF np", "#PF prot", "#PF rsvd"} <= set(t.by_outcome), summary(t)
    assert t.tlb_hits and t.psc_walks and t.quirk_1g, summary(t)
    assert set(t.ok_sizes) == {1 << 12, 1 << 21, 1 << 30}, summary(t)
    assert set(t.fault_levels) >= {0, 1, 2, 3}, summary(t)


def test_aliased_walks_match_unicorn(unicorn: TracingUnicornMmu) -> None:
    """About 2 300 accesses (2 s), a third of them walks that meet themselves."""
    t = run_many(unicorn, range(12), n_vas=4, n_env=2)
    check(t, 2000)
    print(summary(t))


@pytest.mark.slow
def test_aliased_walks_match_unicorn_long(unicorn: TracingUnicornMmu) -> None:
    t = run_many(unicorn, range(1000, 1500), n_vas=6, n_env=3)
    check(t, 100_000)
    print(summary(t))


def test_quirk_1g_leaf_write_is_two_stores(unicorn: TracingUnicornMmu) -> None:
    """QEMU_1G_LEAF_ACCESSED_EARLY, shown in the trace: ROOT[1] points at ROOT (a self-map), ROOT[2] is a
    1 GiB leaf seen through it. A write stores A in ROOT[1], then A in ROOT[2] as soon as it is read as a
    PDPTE, then A|D after the checks; earlymm (one locked update per use, SDM §4.8) makes one store to
    ROOT[2], and ``expected_stores`` turns it into QEMU's two."""
    pool = bytearray(POOL_FRAMES * 0x1000)
    self_map, big = POOL_BASE | P | RW, 0x4000_0000 | P | RW | PS
    for addr, value in ((POOL_BASE + 8, self_map), (POOL_BASE + 16, big),
                        (POOL_BASE + 8 * HARNESS_INDEX, harness_root_entry("4"))):
        struct.pack_into("<Q", pool, addr - POOL_BASE, value)
    unicorn.write_pool(bytes(pool))
    cr0, cr4, efer = control_registers("4", wp=False, nxe=True, smep=False, smap=False, pke=False)
    va = (1 << 39) | (2 << 30) | 0x1234
    u = unicorn.access(cr0=cr0, cr4=cr4, efer=efer, cr3=POOL_BASE, va=va, kind=1, user=False)
    assert u.vector is None and u.pa == 0x4000_1234
    assert [(x.addr, x.value) for x in unicorn.trace.reads] == [(POOL_BASE + 8, self_map), (POOL_BASE + 16, big)]
    stores = [(w.addr, w.old, w.new) for w in unicorn.trace.writes]
    assert stores == [(POOL_BASE + 8, self_map, self_map | A), (POOL_BASE + 16, big, big | A),
                      (POOL_BASE + 16, big | A, big | A | D)], "quirk gone: update expected_stores"
    mem = load_model_memory({POOL_BASE + 0x1000 * i: bytearray(pool[0x1000 * i:0x1000 * (i + 1)])
                             for i in range(POOL_FRAMES)})
    regs = ControlRegs()
    regs.cr0, regs.cr4, regs.efer, regs.cr3 = cr0, cr4, efer, POOL_BASE
    r = Mmu(mem, regs, Features(maxphyaddr=MAXPHYADDR), Tlb(enabled=False)).translate(va, 1, False)
    assert [(u.addr, u.old, u.new) for u in r.ad_updates or []] == \
        [(POOL_BASE + 8, self_map, self_map | A), (POOL_BASE + 16, big, big | A | D)]
    assert expected_stores("4", r, True) == stores
