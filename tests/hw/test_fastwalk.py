"""The specialised walker (``earlymm.hw.fastwalk``) against the reference ``walk`` (``earlymm.hw.walk``).

Every field of every ``WalkResult`` must be equal — outcome, path, physical address, page size, error
code, reason, rights accumulator, A/D updates — on random table forests (tests/hw/forest.py) in 32-bit,
PAE, 4-level and 5-level paging, for every feature set and control-register combination, every access
kind and privilege, and walks started below the root as a paging-structure cache starts them. Memory is
both writable (the simulated machine) and an image seen through copy-on-write (where the walker keeps
tables as tuples and caches VA prefixes), and the caches must follow writes made after they were filled.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earlymm.arch.flags import Cr0, Efer
from earlymm.arch.modes import Features
from earlymm.hw import memory
from earlymm.hw.fastwalk import ACC0, TIER_UP, tiered_walker, walker_for, walker_source
from earlymm.hw.memory import PhysMem
from earlymm.hw.plan import compile_plan
from earlymm.hw.regs import ControlRegs
from earlymm.hw.walk import WalkPlan, WalkResult, walk
from tests.hw.forest import Forest, make_forest
from tests.hw.matrix_support import cr_values

MODES = ("32", "pae", "4", "5")
CONTROLS = ("wp", "nxe", "smep", "smap", "pke", "pks", "pse")


class FrameDict:
    """A read-only ``FrameSource`` (what an image is) holding the forest's frames."""

    def __init__(self, frames: dict[int, bytes]) -> None:
        self.frames = {pa >> 12: bytes(f) for pa, f in frames.items()}

    def frame(self, pfn: int) -> bytes | None:
        return self.frames.get(pfn)

    def ranges(self) -> list[tuple[int, int]]:
        return [(p << 12, (p + 1) << 12) for p in sorted(self.frames)]


def memory_of(forest: Forest, backed: bool, absent_zero: bool = True) -> PhysMem:
    if backed:
        return PhysMem(FrameDict(forest.frames), absent_zero=absent_zero)
    mem = PhysMem(absent_zero=absent_zero)
    for pa, f in forest.frames.items():
        mem.write(pa, bytes(f))
    return mem


def random_plan(forest: Forest, rng: random.Random, features: Features) -> WalkPlan:
    controls = {k: rng.random() < 0.5 for k in CONTROLS}
    if forest.mode not in ("4", "5"):
        controls["pke"] = controls["pks"] = False
    return compile_plan(*cr_values(forest.mode, **controls), features)


def accesses(rng: random.Random, forest: Forest) -> list[tuple[int, int, bool, bool, bool, int, int]]:
    """(va, kind, user, implicit, ac, pkru, pkrs) for each address and kind, with random privilege."""
    out = []
    for va in forest.vas:
        for kind in (0, 1, 2):
            user = rng.random() < 0.4
            out.append((va, kind, user, not user and kind != 2 and rng.random() < 0.2, rng.random() < 0.5,
                        rng.choice((0, rng.getrandbits(32))), rng.choice((0, rng.getrandbits(32)))))
    return out


def compare(mem: PhysMem, plan: WalkPlan, forest: Forest, rng: random.Random, passes: int = 2) -> list[str]:
    """Each access through the specialised walker and through ``walk``; ``passes`` > 1 repeats them in a
    new order, so the second pass runs on warm caches."""
    fast = walker_for(mem, plan)
    pdptes = forest.pdptes() if forest.mode == "pae" else ()
    todo = accesses(rng, forest)
    failures = []
    for _ in range(passes):
        for va, kind, user, implicit, ac, pkru, pkrs in todo:
            want = walk(mem, plan, forest.root, va, kind, user, implicit, ac, pkru, pkrs, pdptes)
            got = fast(forest.root, va, kind, user, implicit, ac, pkru, pkrs, pdptes)
            if got != want:
                failures.append(f"seed={forest.seed} mode={forest.mode} va={va:#x} kind={kind} user={user} "
                                f"implicit={implicit} ac={ac}: fast {got} reference {want}")
        rng.shuffle(todo)
    return failures


FOREST_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FOREST_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(MODES), maxphyaddr=st.sampled_from([36, 40, 46, 52]),
       gbpages=st.booleans(), pse36=st.booleans(), backed=st.booleans())
def test_fast_walk_equals_reference_on_random_forests(seed: int, mode: str, maxphyaddr: int, gbpages: bool,
                                                      pse36: bool, backed: bool) -> None:
    forest = make_forest(seed, mode, n_vas=30, maxphyaddr=maxphyaddr)
    rng = random.Random(seed)
    features = Features(maxphyaddr=maxphyaddr, gbpages=gbpages, pse36=pse36)
    mem = memory_of(forest, backed)
    failures = []
    for _ in range(3):
        failures += compare(mem, random_plan(forest, rng, features), forest, rng)
    assert not failures, f"{len(failures)} disagreements:\n  " + "\n  ".join(failures[:5])


def test_fast_walk_sweep_of_modes_and_features() -> None:
    """A deterministic sweep: every mode × MAXPHYADDR × feature set × memory kind, many forests."""
    failures = []
    for seed in range(160):
        mode = MODES[seed % 4]
        m = (36, 40, 46, 52)[(seed // 4) % 4]
        features = Features(maxphyaddr=m, gbpages=seed % 3 != 0, pse36=seed % 5 != 0)
        forest = make_forest(seed, mode, n_vas=16, maxphyaddr=m)
        rng = random.Random(seed)
        mem = memory_of(forest, backed=seed % 2 == 0)
        failures += compare(mem, random_plan(forest, rng, features), forest, rng)
    assert not failures, f"{len(failures)} disagreements:\n  " + "\n  ".join(failures[:5])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["4", "5"]), backed=st.booleans())
def test_walks_started_below_the_root(seed: int, mode: str, backed: bool) -> None:
    """``first``/``acc`` as the paging-structure caches pass them: start at the table a full walk reached
    at level k, with the accumulator of the entries above it (or any accumulator)."""
    forest = make_forest(seed, mode, n_vas=30)
    rng = random.Random(seed)
    mem = memory_of(forest, backed)
    plan = random_plan(forest, rng, Features())
    fast = walker_for(mem, plan)
    for va, kind, user, implicit, ac, pkru, pkrs in accesses(rng, forest):
        full = walk(mem, plan, forest.root, va)
        for k in range(1, len(full.path) // 2):
            table = full.path[2 * k]
            acc = rng.choice((ACC0, rng.getrandbits(64), ACC0 & rng.getrandbits(64)))
            want = walk(mem, plan, table, va, kind, user, implicit, ac, pkru, pkrs, (), k, acc)
            got = fast(table, va, kind, user, implicit, ac, pkru, pkrs, (), k, acc)
            assert got == want, (k, hex(va), got, want)
        # first = 0 with an accumulator of its own is the reference's business too
        want = walk(mem, plan, forest.root, va, kind, user, implicit, ac, pkru, pkrs, (), 0, ACC0 & ~2)
        assert fast(forest.root, va, kind, user, implicit, ac, pkru, pkrs, (), 0, ACC0 & ~2) == want


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(MODES))
def test_holes_in_an_image(seed: int, mode: str) -> None:
    """An image without absent-as-zero: a table outside the forest is unreadable, a HOLE at that table."""
    forest = make_forest(seed, mode, n_vas=40, p_outside=0.3)
    rng = random.Random(seed)
    mem = memory_of(forest, backed=True, absent_zero=False)
    plan = random_plan(forest, rng, Features())
    assert not compare(mem, plan, forest, rng)


def entries_used(r: WalkResult, plan: WalkPlan) -> list[int]:
    return [r.entry_addr(plan, i) for i in range(len(r.path) // 2) if not plan.levels[r.first + i].from_regs]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(MODES), backed=st.booleans())
def test_caches_follow_writes(seed: int, mode: str, backed: bool) -> None:
    """Warm the caches, then change entries the cached walks used: every later walk sees the new entries.
    On an image each first write to a frame copies it (as an A/D update does); in writable memory the
    frames are written in place."""
    forest = make_forest(seed, mode, n_vas=30)
    rng = random.Random(seed)
    mem = memory_of(forest, backed)
    plan = random_plan(forest, rng, Features())
    pdptes = forest.pdptes() if forest.mode == "pae" else ()
    fast = walker_for(mem, plan)
    size = 4 if mode == "32" else 8
    for _ in range(4):
        for va in forest.vas:
            fast(forest.root, va, 0, False, False, False, 0, 0, pdptes)  # fill the caches
        for va in rng.sample(forest.vas, 5):
            used = entries_used(walk(mem, plan, forest.root, va, 0, False, pdptes=pdptes), plan)
            if used:
                addr = rng.choice(used)
                old = mem.read_int(addr, size)
                new = old ^ rng.choice((1, 2, 4, 0x20, 0x80, 1 << (8 * size - 1), rng.getrandbits(8 * size)))
                mem.write_int(addr, size, new)
        for va in forest.vas:
            for kind in (0, 1, 2):
                want = walk(mem, plan, forest.root, va, kind, False, pdptes=pdptes)
                assert fast(forest.root, va, kind, False, pdptes=pdptes) == want, hex(va)


def test_table_cache_keeps_read_only_frames_as_tuples_and_writable_ones_live() -> None:
    forest = make_forest(7, "4", n_vas=10)
    mem = memory_of(forest, backed=True)
    table = mem.tables8[forest.root]
    assert isinstance(table, tuple) and len(table) == 512
    assert table[0] == mem.read_u64(forest.root)
    mem.write_u64(forest.root, table[0] ^ 2)  # copy on write: the tuple is dropped
    live = mem.tables8[forest.root]
    assert isinstance(live, memoryview) and live[0] == table[0] ^ 2
    mem.write_u64(forest.root, table[0])
    assert live[0] == table[0]


def test_source_folds_the_plan_in() -> None:
    plan = compile_plan(*cr_values("4", nxe=True), Features(maxphyaddr=46))
    src = walker_source(plan)
    assert "0x3ffffffff000" in src  # bits 45:12, MAXPHYADDR 46
    assert "(va >> 39) & 0x1ff" in src and "plan.rows" not in src
    compile(src, "<test>", "exec")


def test_table_cache_limit_starts_afresh_without_changing_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for only a few tables the cache (and every prefix built on it) keeps starting afresh."""
    monkeypatch.setattr(memory, "TABLE_CACHE_LIMIT", 3)
    for seed in range(8):
        forest = make_forest(seed, MODES[seed % 4], n_vas=30)
        rng = random.Random(seed)
        mem = memory_of(forest, backed=True)
        assert not compare(mem, random_plan(forest, rng, Features()), forest, rng, passes=3)
        assert len(mem.tables8) <= 3 and len(mem.tables4) <= 3


def test_registers_hold_plain_ints() -> None:
    """CR writes combine values with IntFlag members; the registers keep the same values as plain ints."""
    regs = ControlRegs()
    regs.cr0 = Cr0.PE | Cr0.PG
    regs.efer = 0x500 | Efer.LMA
    assert type(regs.cr0) is int and regs.cr0 == 0x8000_0001
    assert type(regs.efer) is int and regs.efer == 0x500 | 0x400
    regs.cs_l = True
    assert regs.cs_l is True


SELF_REF_MODES = {"32": (4, (22, 12), 10), "4": (8, (39, 30, 21, 12), 9), "5": (8, (48, 39, 30, 21, 12), 9)}


def self_referencing(mode: str, flags: int) -> tuple[dict[int, bytes], int, list[int]]:
    """A root whose slot ``r`` points back at the root (Linux's old recursive mapping, Windows' self-map)
    with ``flags`` (no A, no D), beside one ordinary chain from slot 0 down to a data page; and every VA
    whose table indices are ``r`` or 0 (so one entry serves at several levels of a walk, up to all of
    them, the last time as the leaf), each at two offsets."""
    esize, shifts, bits = SELF_REF_MODES[mode]
    r = (1 << bits) - 3
    root, n = 0x1000, len(shifts)
    frames = {root + 0x1000 * i: bytearray(4096) for i in range(n)}
    frames[root][r * esize:(r + 1) * esize] = (root | flags).to_bytes(esize, "little")
    for i in range(n - 1):  # slot 0 of each table points at the next one; the last maps page n+1
        nxt = root + 0x1000 * (i + 1)
        frames[nxt - 0x1000][0:esize] = (nxt | flags).to_bytes(esize, "little")
    frames[root + 0x1000 * (n - 1)][0:esize] = ((root + 0x1000 * n) | flags).to_bytes(esize, "little")
    vas = []
    for choice in range(1 << n):
        va = 0
        for level, shift in enumerate(shifts):
            va |= (r if choice >> level & 1 else 0) << shift
        if mode != "32" and va >> 47 & 1:
            va |= -1 << 48 & (1 << 64) - 1 if mode == "4" else -1 << 57 & (1 << 64) - 1
        vas += [va, va | 0x7F8]
    return {pa: bytes(f) for pa, f in frames.items()}, root, vas


@pytest.mark.parametrize("mode", sorted(SELF_REF_MODES))
@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("flags", [0x7, 0x27, 0x3])  # P|RW|US without A; with A but no D; supervisor-only
def test_self_referencing_tables_the_fast_walk_agrees_with_the_reference(mode: str, backed: bool,
                                                                         flags: int) -> None:
    """An entry used at two or more levels of one walk (a self-map) is where A/D updates are subtle: the
    specialised walker must give the reference's answer for every access, and after the A/D writes the
    MMU would commit, again on the memory they leave, until nothing changes."""
    frames, root, vas = self_referencing(mode, flags)
    size = SELF_REF_MODES[mode][0]
    for wp, user_first in ((False, False), (True, True)):
        if backed:
            mem = PhysMem(FrameDict(frames), absent_zero=True)
        else:
            mem = PhysMem(absent_zero=True)
            for pa, f in frames.items():
                mem.write(pa, f)
        plan = compile_plan(*cr_values(mode, wp=wp, nxe=mode != "32"), Features())
        fast = walker_for(mem, plan)
        for _ in range(3):
            for va in vas:
                for kind, user in ((1, user_first), (0, not user_first), (2, False), (1, not user_first)):
                    want = walk(mem, plan, root, va, kind, user)
                    got = fast(root, va, kind, user)
                    assert got == want, f"{mode} va={va:#x} kind={kind} user={user}: fast {got} reference {want}"
                    for u in want.ad_updates or ():  # as Mmu.translate commits them
                        mem.write_int(u.addr, u.size, mem.read_int(u.addr, u.size) | (u.new & ~u.old))
        self_map = root + ((1 << SELF_REF_MODES[mode][2]) - 3) * size
        assert mem.read_int(self_map, size) & 0x20  # the self-map entry was used, so it has A now


@pytest.mark.parametrize("mode", MODES)
def test_tiered_walker_answers_like_the_reference_before_and_after_it_compiles(mode: str) -> None:
    """The MMU's walker: the reference for the first ``TIER_UP`` walks of a plan over a memory (counted
    across bindings, as the MMU binds again after every control-register write), then the specialised
    walker, handed to ``on_build`` — the answers equal ``walk``'s throughout."""
    forest = make_forest(7, mode, n_vas=24)
    rng = random.Random(7)
    mem = memory_of(forest, backed=True)
    plan = random_plan(forest, rng, Features())
    pdptes = forest.pdptes() if mode == "pae" else ()
    built: list[object] = []
    todo = accesses(rng, forest)
    walks = 0
    while walks < TIER_UP + 2 * len(todo):
        tw = tiered_walker(mem, plan, built.append)  # a fresh binding each round
        for va, kind, user, implicit, ac, pkru, pkrs in todo:
            want = walk(mem, plan, forest.root, va, kind, user, implicit, ac, pkru, pkrs, pdptes)
            assert tw(forest.root, va, kind, user, implicit, ac, pkru, pkrs, pdptes) == want
            walks += 1
            assert (plan in mem.walkers) == (walks > TIER_UP)
    assert len(built) >= 1 and all(b is mem.walkers[plan] for b in built)
    assert tiered_walker(mem, plan) is mem.walkers[plan]  # once built, bindings get it directly
