"""Hypothesis properties of the walk: round trips through ``Mapper``, ``probe`` purity, canonical-address
#GP, large-page offsets, and agreement with ``tests/reference.py`` on random table forests."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from earlymm.arch.modes import Features
from earlymm.hw.faults import CpuException, GeneralProtection
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import PhysMem
from earlymm.hw.mmu import Mmu
from earlymm.hw.regs import ControlRegs
from earlymm.hw.tlb import Tlb
from earlymm.hw.walk import GP, OK
from tests import reference as ref
from tests.hw.forest import Forest, make_forest, noncanonical
from tests.hw.matrix_support import PMODE, boot_cpu, cr_values, outcome_diff

SIZES = {"32": (1 << 12, 1 << 22), "pae": (1 << 12, 1 << 21), "4": (1 << 12, 1 << 21, 1 << 30),
         "5": (1 << 12, 1 << 21, 1 << 30)}
VA_BITS = {"32": 32, "pae": 32, "4": 48, "5": 57}

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def canonical(va: int, mode: str) -> int:
    w = VA_BITS[mode]
    va &= (1 << w) - 1
    if mode in ("4", "5") and va >> (w - 1):
        va |= ((1 << 64) - 1) ^ ((1 << w) - 1)
    return va


# -- map, then translate ----------------------------------------------------------------------------


@PROPS
@given(mode=st.sampled_from(["32", "pae", "4", "5"]), data=st.data())
def test_map_then_translate_round_trip(mode: str, data: st.DataObject) -> None:
    size = data.draw(st.sampled_from(SIZES[mode]), label="page size")
    maxpa = 40 if mode == "32" and size == 1 << 22 else (32 if mode == "32" else 46)
    va = canonical(data.draw(st.integers(0, (1 << VA_BITS[mode]) - 1), label="va") & -size, mode)
    pa = data.draw(st.integers(0, (1 << maxpa) - 1), label="pa") & -size
    flags = data.draw(st.sampled_from([2, 6, 0, 4]), label="flags")
    mem = PhysMem()
    alloc = FrameAllocator(mem, 0x10_0000, 0x80_0000)
    mapper = Mapper(mem, PMODE[mode], alloc)
    mapper.map_page(va, pa, size, flags)
    cpu = boot_cpu(mem, mode, mapper.root, Features(maxphyaddr=46))
    off = data.draw(st.integers(0, size - 1), label="offset")
    r = cpu.mmu.translate(va + off)
    assert r.outcome == OK, r
    assert r.pa == pa + off and r.page_size == size
    want = ref.translate(mem.read_int, ref.RefCpu(cpu.regs.cr0, mapper.root, cpu.regs.cr4, cpu.regs.efer,
                                                  maxphyaddr=46, pdptes=cpu.regs.pdptes if mode == "pae" else None),
                         ref.RefAccess(va + off))
    assert want.outcome == ref.OK and want.pa == pa + off


@PROPS
@given(mode=st.sampled_from(["32", "pae", "4", "5"]), data=st.data())
def test_large_page_offsets(mode: str, data: st.DataObject) -> None:
    """Every byte of a large page maps to base + offset, including offsets whose bits look like the
    table indices below the leaf."""
    size = SIZES[mode][-1]
    pa = (3 << 32) if mode != "32" else 0x1_0000_0000 * 3 + (5 << 22)
    pa &= -size
    va = {"32": 0x8040_0000, "pae": 0xC020_0000, "4": 0xFFFF_8880_4000_0000, "5": 0xFF11_0000_4000_0000}[mode] & -size
    mem = PhysMem()
    mapper = Mapper(mem, PMODE[mode], FrameAllocator(mem, 0x10_0000, 0x20_0000))
    mapper.map_page(va, pa, size, 2)
    cpu = boot_cpu(mem, mode, mapper.root)
    for _ in range(20):
        off = data.draw(st.integers(0, size - 1))
        r = cpu.mmu.probe(va + off)
        assert r.outcome == OK and r.pa == pa + off, (hex(off), r)


# -- probe is pure --------------------------------------------------------------------------------


def snapshot(mmu: Mmu) -> tuple[dict[int, bytes], list[tuple[object, ...]]]:
    frames = {pfn: bytes(f) for pfn, f in mmu.mem.frames.items()}
    tlb: list[tuple[object, ...]] = [
        (e.va, e.pa, e.size, e.user_page, e.writable, e.xd, e.pkey, e.dirty, e.global_, e.pcid)
        for e in mmu.tlb.entries()
    ]
    return frames, sorted(tlb, key=repr)


@PROPS
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["32", "pae", "4", "5"]))
def test_probe_never_changes_memory_or_tlb(seed: int, mode: str) -> None:
    forest = make_forest(seed, mode, n_vas=20)
    mem = load(forest)
    regs = ControlRegs()
    mmu = Mmu(mem, regs, Features(), Tlb())
    regs.cr0, regs.cr4, regs.efer = cr_values(mode, nxe=True, smap=True, pke=True)
    regs.cr3, regs.pdptes, regs.pkru = forest.root, forest.pdptes(), 0x0C
    mmu.reload()
    for va in forest.vas[:10]:
        mmu.translate(va, 0)  # give the TLB something to lose
    before = snapshot(mmu)
    writes = mem.writes
    rng = random.Random(seed)
    for va in forest.vas:
        for kind in (0, 1, 2):
            mmu.probe(va, kind, user=rng.random() < 0.5, implicit=rng.random() < 0.2, ac=rng.random() < 0.5)
    assert mem.writes == writes
    assert snapshot(mmu) == before


# -- canonical addresses ------------------------------------------------------------------------------


@PROPS
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["4", "5"]), kind=st.sampled_from([0, 1, 2]))
def test_noncanonical_is_general_protection(seed: int, mode: str, kind: int) -> None:
    width = 48 if mode == "4" else 57
    va = noncanonical(random.Random(seed), width)
    mem = PhysMem()
    cpu = boot_cpu(mem, mode, 0x1000)
    cpu.regs.cr2 = 0x1234
    r = cpu.mmu.probe(va, kind)
    assert r.outcome == GP
    want = ref.translate(mem.read_int, ref.RefCpu(cpu.regs.cr0, 0x1000, cpu.regs.cr4, cpu.regs.efer),
                         ref.RefAccess(va, kind))
    assert want.outcome == ref.GP
    with pytest.raises(CpuException) as info:
        if kind == 0:
            cpu.load(va, 1)
        elif kind == 1:
            cpu.store(va, 1, 0)
        else:
            cpu.fetch(va)
    assert isinstance(info.value.fault, GeneralProtection)
    assert info.value.fault.error_code == 0
    assert cpu.regs.cr2 == 0x1234, "CR2 must not change on #GP"


@pytest.mark.parametrize("mode", ["4", "5"])
def test_canonical_boundaries(mode: str) -> None:
    width = 48 if mode == "4" else 57
    mem = PhysMem()
    cpu = boot_cpu(mem, mode, 0x1000)
    low_top = (1 << (width - 1)) - 1
    high_bottom = ((1 << 64) - 1) ^ low_top
    for va in (low_top, high_bottom, 0, (1 << 64) - 1):
        assert cpu.mmu.probe(va).outcome != GP, hex(va)
    for va in (low_top + 1, high_bottom - 1, 1 << 63, 1 << (width - 1)):
        assert cpu.mmu.probe(va).outcome == GP, hex(va)


# -- walk == reference on random forests -----------------------------------------------------------


def load(forest: Forest) -> PhysMem:
    mem = PhysMem()
    for pa, f in forest.frames.items():
        mem.write(pa, bytes(f))
    return mem


def compare_forest(forest: Forest, rng: random.Random, features: Features, n_env: int = 4,
                   keys: bool = True) -> list[str]:
    mem = load(forest)
    regs = ControlRegs()
    mmu = Mmu(mem, regs, features, Tlb(enabled=False))
    failures = []
    pristine = {pfn: bytes(f) for pfn, f in mem.frames.items()}
    for _ in range(n_env):
        controls = {k: rng.random() < 0.5 for k in ("wp", "nxe", "smep", "smap", "pke", "pks", "pse")}
        if forest.mode not in ("4", "5") or not keys:
            controls["pke"] = controls["pks"] = False
        cr0, cr4, efer = cr_values(forest.mode, **controls)
        pkru, pkrs = rng.getrandbits(32), rng.getrandbits(32)
        regs.cr0, regs.cr4, regs.efer, regs.cr3 = cr0, cr4, efer, forest.root
        regs.pkru, regs.pkrs = pkru, pkrs
        pdptes = forest.pdptes() if forest.mode == "pae" else None
        if pdptes and any(p & 1 and p & ref.pae_pdpte_reserved(features.maxphyaddr) for p in pdptes):
            return failures  # MOV CR3 would raise #GP (SDM 4.4.1): no walk happens; the CR rules test that
        regs.pdptes = pdptes or (0, 0, 0, 0)
        mmu.reload()
        cpu = ref.RefCpu(cr0, forest.root, cr4, efer, maxphyaddr=features.maxphyaddr, gbpages=features.gbpages,
                         pse36=features.pse36, pkru=pkru, pkrs=pkrs, pdptes=pdptes)
        for va in forest.vas:
            for kind in (0, 1, 2):
                user = rng.random() < 0.4
                implicit = not user and kind != 2 and rng.random() < 0.2
                ac = rng.random() < 0.5
                want = ref.translate(forest.read, cpu, ref.RefAccess(va, kind, user, implicit, ac))
                got = mmu.probe(va, kind, user, implicit, ac)
                name = (f"seed={forest.seed} mode={forest.mode} M={features.maxphyaddr} va={va:#x} "
                        f"{('user' if user else 'implicit' if implicit else 'supervisor')} "
                        f"{ref.KIND_WORDS[kind]} ac={int(ac)} cr0={cr0:#x} cr4={cr4:#x} efer={efer:#x} "
                        f"pkru={pkru:#x} pkrs={pkrs:#x}")
                diff = outcome_diff(got, want)
                if diff:
                    failures.append(f"{name}: {diff}")
                    continue
                # translate: exactly the reference's A/D writes, nothing else.
                mmu.translate(va, kind, user, implicit, ac)
                expected = {pfn: bytearray(b) for pfn, b in pristine.items()}
                for addr, (size, value) in want.ad.items():
                    off = addr & 0xFFF
                    expected[addr >> 12][off:off + size] = value.to_bytes(size, "little")
                if set(mem.frames) != set(pristine):
                    failures.append(f"{name}: translate wrote outside the tables: "
                                    f"{sorted(hex(p << 12) for p in set(mem.frames) - set(pristine))}")
                for pfn, f in mem.frames.items():
                    if pfn in expected and f != expected[pfn]:
                        bad = [i * 8 for i in range(512) if f[i * 8:i * 8 + 8] != expected[pfn][i * 8:i * 8 + 8]]
                        failures.append(f"{name}: A/D differ at " + ", ".join(
                            f"{(pfn << 12) + o:#x} earlymm {int.from_bytes(f[o:o + 8], 'little'):#x} "
                            f"reference {int.from_bytes(expected[pfn][o:o + 8], 'little'):#x}" for o in bad[:4]))
                    if pfn in pristine:
                        f[:] = pristine[pfn]
    return failures


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(seed=3145728, mode="pae", maxphyaddr=36, gbpages=False, pse36=False)  # a PDPTE with reserved bits
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["32", "pae", "4", "5"]),
       maxphyaddr=st.sampled_from([36, 40, 46, 52]), gbpages=st.booleans(), pse36=st.booleans())
def test_walk_matches_reference_on_random_forests(seed: int, mode: str, maxphyaddr: int, gbpages: bool,
                                                  pse36: bool) -> None:
    forest = make_forest(seed, mode, n_vas=30, maxphyaddr=maxphyaddr)
    features = Features(maxphyaddr=maxphyaddr, gbpages=gbpages, pse36=pse36)
    failures = compare_forest(forest, random.Random(seed ^ 0x5EED), features)
    assert not failures, f"{len(failures)} disagreements:\n  " + "\n  ".join(failures[:10])


def test_forest_sweep_without_protection_keys() -> None:
    """A deterministic sweep of 200 forests with CR4.PKE=PKS=0, so that the PK error-code issue that
    test_rights_matrix pins down cannot hide anything else here."""
    failures = []
    for seed in range(200):
        mode = ("32", "pae", "4", "5")[seed % 4]
        m = (36, 40, 46, 52)[(seed // 4) % 4]
        forest = make_forest(seed, mode, n_vas=16, maxphyaddr=m)
        features = Features(maxphyaddr=m, gbpages=seed % 3 != 0, pse36=seed % 5 != 0)
        failures += compare_forest(forest, random.Random(seed), features, n_env=3, keys=False)
    assert not failures, f"{len(failures)} disagreements:\n  " + "\n  ".join(failures[:10])
