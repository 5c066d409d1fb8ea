"""``translate_many`` on the committed real-kernel fixtures (QEMU cores of Linux 6.1: 4- and 5-level,
KASLR, 5 GiB of RAM, ``-cpu max`` with SMEP/SMAP/PKE): QEMU's own ``gva2gpa`` answers, and the scalar
``walk`` field by field over thousands of addresses drawn from gva2gpa and from the tables themselves,
for every access kind and privilege, with the captured control registers and with WP/SMEP/SMAP/PKE/PKS
toggled on the same tables."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from earlymm.arch.flags import Cr0, Cr4
from earlymm.arch.modes import Features
from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import GP, OK, compile_plan
from earlymm.images import open_image
from earlymm.images.minimize import read_capture_text
from earlymm.images.monitor_text import parse_gva2gpa_file
from earlymm.tools.bulk import translate_many
from tests.bulk.support import ACCESSES, ADDR, ia32e_leaves, mismatches

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CAPTURES = sorted(p for p in FIXTURES.glob("qemu-*") if (p / "core.elf.gz").exists())
EFER = 0xD01  # SCE | LME | LMA | NXE: QEMU's core has no EFER; the captures' registers.txt say 0xd01


@pytest.fixture(params=CAPTURES, ids=[p.name for p in CAPTURES])
def capture(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def machine(capture: Path, absent_zero: bool = True) -> Iterator[tuple[PhysMem, int, int, int, int]]:
    """(memory, cr0, cr3's table address, cr4, levels) of the fixture's CPU 0."""
    with open_image(capture / "core.elf.gz") as img:
        cpu = img.cpus[0]
        yield PhysMem(img, absent_zero=absent_zero), cpu.cr0, cpu.cr3 & ADDR, cpu.cr4, 5 if cpu.cr4 & Cr4.LA57 else 4


def sample_vas(mem: PhysMem, root: int, levels: int, gva: list[int], rng: random.Random, n: int) -> list[int]:
    """gva2gpa's addresses, then leaves of the tables (base, last byte, a random byte, the bytes just outside),
    random canonical addresses of both halves and a few non-canonical ones."""
    width = 12 + 9 * levels
    leaves = ia32e_leaves(mem, root, levels)
    vas = list(gva)
    for va, size in rng.sample(leaves, min(n // 5, len(leaves))):
        vas += [va, va + size - 1, va + rng.randrange(size), (va - 1) % (1 << 64), (va + size) % (1 << 64)]
    for _ in range(n // 10):
        va = rng.getrandbits(width - 1)
        vas.append(va if rng.random() < 0.5 else va | ((1 << 64) - (1 << (width - 1))))
    vas += [rng.randrange(1 << (width - 1), (1 << 64) - (1 << (width - 1))) for _ in range(n // 100)]
    return vas


def test_agrees_with_qemu_gva2gpa(capture: Path) -> None:
    """QEMU's gva2gpa ignores rights, so probe as the owner would: CPL 3 below the canonical hole, CPL 0
    above it (as tests/test_real_kernel.py does)."""
    samples = parse_gva2gpa_file(read_capture_text(capture, "gva2gpa.txt"))
    for mem, cr0, root, cr4, _levels in machine(capture):
        plan = compile_plan(cr0, cr4, EFER, Features())
        vas = np.array([va for va, _ in samples], dtype=np.uint64)
        upper = (vas >> np.uint64(63)) != 0
        lo = translate_many(mem, plan, root, vas, user=True)
        hi = translate_many(mem, plan, root, vas, user=False)
        wrong = []
        for i, (va, want) in enumerate(samples):
            r = hi if upper[i] else lo
            got = int(r.pa[i]) if r.outcome[i] == OK else None
            if got != want:
                wrong.append(f"{va:#x}: QEMU {want!r}, bulk {got!r} (outcome {int(r.outcome[i])})")
        assert not wrong, "\n".join(wrong[:20])
        assert sum(pa is None for _, pa in samples) >= 20 and np.count_nonzero(hi.outcome == GP) >= 1


@pytest.mark.parametrize("absent_zero", [True, False], ids=["absent-zero", "absent-hole"])
def test_matches_walk_with_captured_registers(capture: Path, absent_zero: bool) -> None:
    samples = parse_gva2gpa_file(read_capture_text(capture, "gva2gpa.txt"))
    rng = random.Random(capture.name)
    for mem, cr0, root, cr4, levels in machine(capture, absent_zero):
        vas = sample_vas(mem, root, levels, [va for va, _ in samples], rng, 3000)
        assert len(vas) >= 3000
        plan = compile_plan(cr0, cr4, EFER, Features())
        bad: list[str] = []
        for kind, user, implicit, ac in ACCESSES:
            bad += mismatches(mem, plan, root, vas, kind, user, implicit, ac, pkru=0x5555_5554, pkrs=0,
                              label=capture.name)
        assert not bad, f"{len(bad)} disagreements:\n  " + "\n  ".join(bad[:10])


def test_matches_walk_with_toggled_controls(capture: Path) -> None:
    """The same real tables under other rights regimes: WP off, SMEP/SMAP/PKE/PKS on or off, random keys."""
    rng = random.Random("toggle " + capture.name)
    for mem, cr0, root, cr4, levels in machine(capture):
        vas = sample_vas(mem, root, levels, [], rng, 1500)
        bad: list[str] = []
        for _ in range(4):
            c0 = cr0 ^ (int(Cr0.WP) if rng.random() < 0.5 else 0)
            c4 = cr4
            for bit in (Cr4.SMEP, Cr4.SMAP, Cr4.PKE, Cr4.PKS):
                c4 = c4 | int(bit) if rng.random() < 0.5 else c4 & ~int(bit)
            efer = EFER if rng.random() < 0.8 else EFER & ~0x800  # NXE off: XD becomes a reserved bit
            plan = compile_plan(c0, c4, efer, Features(maxphyaddr=rng.choice((36, 40, 46, 52))))
            pkru, pkrs = rng.getrandbits(32), rng.getrandbits(32)
            for kind, user, implicit, ac in ACCESSES:
                bad += mismatches(mem, plan, root, vas, kind, user, implicit, ac, pkru, pkrs,
                                  label=f"{capture.name} cr0={c0:#x} cr4={c4:#x} efer={efer:#x}")
        assert not bad, f"{len(bad)} disagreements:\n  " + "\n  ".join(bad[:10])
