"""Every single-bit change of every entry on a walk's path, in every mode: reserved bits (above MAXPHYADDR,
XD without NXE, PS where no page can be, a large page's low address bits, PSE-36's), P, RW, US, PS, keys,
and table pointers bent into other frames or holes — the bulk answer must equal the walk's each time."""

from __future__ import annotations

import pytest

from earlymm.arch.modes import Features
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import walk
from tests.bulk.scenes import LEVELS, SIZES, canonical
from tests.bulk.support import Env, mismatches
from tests.hw.matrix_support import PMODE

FEATURES = (Features(), Features(maxphyaddr=36, gbpages=False, pse36=False), Features(maxphyaddr=40))
BASES = {"32": 0x8000_0000, "pae": 0x8000_0000, "4": 0xFFFF_8880_0000_0000, "5": 0xFF11_0000_0000_0000}


@pytest.mark.parametrize("features", FEATURES, ids=["M52", "M36-no1G-noPSE36", "M40"])
@pytest.mark.parametrize("mode", ["32", "pae", "4", "5"])
def test_single_bit_flips(mode: str, features: Features) -> None:
    mem = PhysMem(absent_zero=False)
    mapper = Mapper(mem, PMODE[mode], FrameAllocator(mem, 0x10_0000, 0x20_0000), maxphyaddr=features.maxphyaddr)
    pages = []
    for k, size in enumerate(SIZES[mode]):
        va = canonical(BASES[mode] + k * (1 << 30) + size, mode)
        mapper.map_page(va, 0x4000_0000 + k * (1 << 30), size, 6)
        pages.append((va, size))
    probes = [v for va, size in pages for v in (va, va + size - 1, va + size // 3)]
    keys = mode in ("4", "5")
    envs = (Env(), Env(True, True, True, True, keys, keys, True, 0x5555_5554, 0x0C))
    bad: list[str] = []
    seen: set[str] = set()
    width = 32 if mode == "32" else 64
    esize = width // 8
    for va, _size in pages:
        for level in LEVELS[mode]:
            try:
                ea = mapper.entry_addr(va, level)
            except ValueError:
                continue  # below this page's leaf
            assert ea is not None
            e = mem.read_int(ea, esize)
            for bit in range(width):
                mem.write_int(ea, esize, e ^ (1 << bit))
                pdptes = tuple(mem.read_u64(mapper.root + 8 * i) for i in range(4)) if mode == "pae" else ()
                for env in envs:
                    plan = env.plan(mode, features)
                    for kind, user in ((0, False), (1, True), (2, False)):
                        bad += mismatches(mem, plan, mapper.root, probes, kind, user, pkru=env.pkru,
                                          pkrs=env.pkrs, pdptes=pdptes,
                                          label=f"{mode} {features} {level.name} bit {bit}")
                        r = walk(mem, plan, mapper.root, va, kind, user, False, False, env.pkru, env.pkrs, pdptes)
                        seen.add(r.reason.name if r.reason else "OK")
            mem.write_int(ea, esize, e)
    assert not bad, f"{len(bad)} disagreements:\n  " + "\n  ".join(bad[:10])
    assert {"OK", "RESERVED", "NOT_PRESENT"} <= seen, seen
    if features.maxphyaddr == 52 or mode == "32":
        return
    assert "HOLE" in seen, seen
