"""The shape of ``translate_many``'s answer, its inputs, and the properties that make it usable on big
inputs: chunking does not change answers, tables are read once, hostile tables stay bounded, nothing is
written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from earlymm.arch.modes import Features
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import GP, HOLE, OK, PF, compile_plan, walk
from earlymm.images import open_image
from earlymm.tools import bulk
from earlymm.tools.bulk import BulkResult, probe_many, translate_many
from earlymm.tools.machine_view import make_cpu
from tests.bulk.scenes import make_scene
from tests.bulk.support import FIELDS, Env, mismatches
from tests.hw.matrix_support import PMODE, boot_cpu

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "qemu-l4" / "core.elf.gz"
LONG4 = Env(wp=True, nxe=True)


def four_level() -> tuple[PhysMem, int]:
    mem = PhysMem()
    m = Mapper(mem, PMODE["4"], FrameAllocator(mem, 0x10_0000, 0x20_0000))
    m.map(0x40_0000, 0x1234_5000, 0x3000, flags=6)
    m.map_page(0xFFFF_8880_0020_0000, 0x20_0000, 1 << 21, 2)
    m.map_page(0xFFFF_8881_0000_0000, 0x4000_0000, 1 << 30, 2 | (1 << 63))
    return mem, m.root


def test_dtypes_and_shape() -> None:
    mem, root = four_level()
    plan = LONG4.plan("4", Features())
    vas = np.array([[0x40_0123, 0xFFFF_8880_0021_2345], [0x1234, 0x8000_0000_0000]], dtype=np.uint64)
    r = translate_many(mem, plan, root, vas)
    assert isinstance(r, BulkResult) and len(r) == 4
    want = {"pa": np.uint64, "page_size": np.uint64, "outcome": np.uint8, "error_code": np.uint32,
            "user_page": np.bool_, "writable": np.bool_, "xd": np.bool_, "pkey": np.uint8}
    for name, dt in want.items():
        a = getattr(r, name)
        assert a.dtype == dt and a.shape == (2, 2), name
    assert r.pa.tolist() == [[0x1234_5123, 0x21_2345], [0, 0]]
    assert r.outcome.tolist() == [[OK, OK], [PF, GP]] and r.ok.tolist() == [[True, True], [False, False]]
    assert r.page_size.tolist() == [[1 << 12, 1 << 21], [0, 0]]


def test_inputs_as_lists_and_signed() -> None:
    """Python ints up to 2**64-1 and int64 arrays (kernel addresses negative) mean the same addresses."""
    mem, root = four_level()
    plan = LONG4.plan("4", Features())
    vas = [0x40_0000, 0xFFFF_8880_0020_0010, 0xFFFF_8881_2345_6789, (1 << 64) - 1]
    a = translate_many(mem, plan, root, vas, kind=2)
    b = translate_many(mem, plan, root, np.array(vas, dtype=np.uint64).view(np.int64), kind=2)
    for f in FIELDS:
        assert getattr(a, f).tolist() == getattr(b, f).tolist(), f
    assert a.xd.tolist() == [False, False, True, False]
    assert a.outcome.tolist()[2] == PF and a.error_code.tolist()[2] == 0x11  # NX fetch


def test_empty() -> None:
    mem, root = four_level()
    r = translate_many(mem, LONG4.plan("4", Features()), root, np.array([], dtype=np.uint64))
    assert len(r) == 0 and r.pa.dtype == np.uint64


def test_paging_disabled() -> None:
    plan = compile_plan(1, 0, 0, Features())  # CR0.PE only
    vas = [0, 0x1234_5678, 0xFFFF_FFFF_8000_1234]
    r = translate_many(PhysMem(), plan, 0, vas)
    for i, va in enumerate(vas):
        w = walk(PhysMem(), plan, 0, va)
        assert tuple(getattr(r, f).tolist()[i] for f in FIELDS) == tuple(getattr(w, f) for f in FIELDS)


def test_pae_needs_pdptes() -> None:
    with pytest.raises(ValueError, match="PDPTE"):
        translate_many(PhysMem(), Env().plan("pae", Features()), 0x1000, [0])


def test_root_in_a_hole() -> None:
    plan = LONG4.plan("4", Features())
    r = translate_many(PhysMem(absent_zero=False), plan, 0x5000, [0, 1 << 47])
    assert r.outcome.tolist() == [HOLE, GP]


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunking_does_not_change_answers(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Tiny chunks make rows, table growth and result growth happen between chunks and mid-call."""
    for seed, mode in ((1, "4"), (2, "5"), (3, "pae"), (4, "32")):
        scene = make_scene(seed, mode, clusters=20)
        plan = Env(wp=True, nxe=True, smep=True).plan(mode, scene.features)
        vas = np.array(scene.vas, dtype=np.uint64)
        whole = translate_many(scene.mem, plan, scene.root, vas, 1, True, pdptes=scene.pdptes)
        monkeypatch.setattr(bulk, "CHUNK", chunk)
        bad = mismatches(scene.mem, plan, scene.root, scene.vas, 1, True, pdptes=scene.pdptes, label=mode)
        parts = translate_many(scene.mem, plan, scene.root, vas, 1, True, pdptes=scene.pdptes)
        monkeypatch.undo()
        assert not bad, "\n".join(bad[:10])
        for f in FIELDS:
            assert getattr(whole, f).tolist() == getattr(parts, f).tolist(), f


def test_many_addresses_match_the_walk() -> None:
    """200k addresses over a real kernel's tables (several chunks) against the walk on every 20th."""
    with open_image(FIXTURE) as img:
        cpu = img.cpus[0]
        mem = PhysMem(img)
        plan = compile_plan(cpu.cr0, cpu.cr4, 0xD01, Features())
        root = cpu.cr3 & 0x000F_FFFF_FFFF_F000
        rng = np.random.default_rng(7)
        # Half in the direct map's first 512 MiB, half anywhere canonical (mostly unmapped).
        direct = np.uint64(0xFFFF_8880_0000_0000) + rng.integers(0, 1 << 29, 100_000).astype(np.uint64)
        anywhere = rng.integers(0, 1 << 48, 100_000).astype(np.uint64)
        anywhere[anywhere >= 1 << 47] |= np.uint64(0xFFFF << 48)
        vas = np.concatenate([direct, anywhere])
        rng.shuffle(vas)
        r = translate_many(mem, plan, root, vas)
        assert np.count_nonzero(r.outcome == OK) > 95_000  # the direct map skips e820 holes
        for i in range(0, vas.size, 20):
            w = walk(mem, plan, root, int(vas[i]))
            assert (int(r.outcome[i]), int(r.pa[i]), int(r.error_code[i])) == (w.outcome, w.pa, w.error_code)
        assert not mem.frames, "a probe must not create copy-on-write frames"


def test_each_table_read_once_and_hostile_tables_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every entry of a 5-level root points back at the root: a million addresses reach 512**5 paths, but
    contexts are (frame, rights) per level, so the table is read at most once per level."""
    mem = PhysMem()
    root = 0x10_0000
    mem.write(root, np.full(512, root | 0x67, dtype=np.uint64).tobytes())
    loads: list[int] = []
    real = PhysMem.entries8

    def counting(self: PhysMem, pfn: int) -> memoryview | None:
        loads.append(pfn)
        return real(self, pfn)

    monkeypatch.setattr(PhysMem, "entries8", counting)
    plan = Env(nxe=True).plan("5", Features())
    vas = np.random.default_rng(1).integers(0, 1 << 56, 1_000_000).astype(np.uint64)
    r = translate_many(mem, plan, root, vas)
    assert len(loads) == 5 and set(loads) == {root >> 12}
    assert np.all(r.outcome == OK) and np.all(r.pa == np.uint64(root) | (vas & np.uint64(0xFFF)))


def test_probe_many_matches_mmu_probe() -> None:
    with open_image(FIXTURE) as img:
        cpu0 = img.cpus[0]
        cpu = make_cpu(img, (cpu0.cr0, cpu0.cr3, cpu0.cr4, 0xD01), Features(), absent_zero=True, pkru=0x5555_5554)
        vas = [0, 0x40_0000, 0xFFFF_FFFF_8100_0000, 0xFFFF_8880_0123_4567, 0xFFFF_FE00_0000_1000, 1 << 60]
        for kind in (0, 1, 2):
            for user in (False, True):
                r = probe_many(cpu.mmu, vas, kind, user)
                for i, va in enumerate(vas):
                    w = cpu.mmu.probe(va, kind, user)
                    assert tuple(getattr(r, f).tolist()[i] for f in FIELDS) == tuple(getattr(w, f) for f in FIELDS)


def test_pae_through_a_cpu() -> None:
    """PAE's first level comes from the PDPTE registers loaded at the CR3 write, not from memory."""
    mem = PhysMem()
    m = Mapper(mem, PMODE["pae"], FrameAllocator(mem, 0x10_0000, 0x20_0000))
    m.map_page(0xC000_0000, 0x20_0000, 1 << 21, 2)
    m.map_page(0x4000_1000, 0x7000, 1 << 12, 6)
    cpu = boot_cpu(mem, "pae", m.root)
    mem.write_u64(m.root + 24, 0)  # after the load: the register copy still maps 0xC0000000
    r = probe_many(cpu.mmu, [0xC000_1234, 0x4000_1FFF, 0x8000_0000])
    assert r.pa.tolist() == [0x20_1234, 0x7FFF, 0] and r.outcome.tolist() == [OK, OK, PF]
