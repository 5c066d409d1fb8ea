"""``earlymm rmap``: every VA mapping a physical address, checked against QEMU's ``info tlb`` (which lists every
leaf of every path, espfix's 65,536 aliases included), and bounded on hostile tables (counts from arithmetic).
"""

from __future__ import annotations

import gzip
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from earlymm.arch.modes import PagingMode
from earlymm.hw.memory import PhysMem
from earlymm.images import CpuState, write_qemu_core
from earlymm.images.cpustate import Segment
from earlymm.images.monitor_text import parse_info_tlb
from tests.inspect.support import (
    FIXTURES,
    NOKASLR,
    cli,
    core,
    guest_address,
    gva2gpa,
    kallsyms,
    leaves,
    one_line_error,
)

QEMU_FIXTURES = [FIXTURES / n for n in ("qemu-l4", "qemu-l5", "qemu-pti", "qemu-kaslr-syms")]


def qemu_map(fixture: Path) -> dict[int, list[int]]:
    """Physical page (4 KiB) → every VA of it, from QEMU's info tlb (2 MiB / 1 GiB leaves split into pages
    only where asked: see ``vas_of``)."""
    tlb = parse_info_tlb(gzip.decompress((fixture / "tlb.txt.gz").read_bytes()).decode())
    out: dict[int, list[int]] = defaultdict(list)
    for t in tlb:
        out[t.pa].append(t.va)
    return out


def vas_of(tlb: list[tuple[int, int, int]], pa: int) -> list[int]:
    """Every VA info tlb maps ``pa`` at (a large leaf: the line's VA plus the offset in the page)."""
    return sorted(va + pa - lpa for va, lpa, size in tlb if lpa <= pa < lpa + size)


def rmap_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    r = cli(capsys, "rmap", *argv, "--json")
    assert r.code == 0, r.err
    doc: dict = json.loads(r.out)  # type: ignore[type-arg]
    return doc


def listed(space: dict) -> tuple[int, list[int]]:  # type: ignore[type-arg]
    """(total count, every VA when all groups are small enough to be sampled fully)."""
    vas = []
    for m in space["mappings"]:
        assert len(m["sample_vas"]) == min(m["aliases"], 64)
        vas += [int(v, 16) for v in m["sample_vas"]]
    return space["total"], sorted(vas)


@pytest.mark.parametrize("fixture", QEMU_FIXTURES, ids=[p.name for p in QEMU_FIXTURES])
def test_every_va_qemu_lists(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """For a spread of physical pages (the most aliased one, pages of the kernel image, the direct map, user
    pages) rmap's count and VAs in the CPU's CR3 are exactly the VAs of QEMU's info tlb."""
    by_pa = qemu_map(fixture)
    tlb = leaves(fixture)
    ranked = sorted(by_pa, key=lambda p: (-len(by_pa[p]), p))
    picks = ranked[:2] + ranked[len(ranked) // 3::max(1, len(ranked) // 8)][:6]
    for pa in picks:
        probe = pa + 0x234
        doc = rmap_json(capsys, core(fixture), f"{probe:#x}", "--absent", "zero")
        space = doc["address_spaces"][0]
        assert space["sources"][0] == "CPU 0" and space["complete"]
        want = vas_of(tlb, probe)
        total, vas = listed(space)
        assert total == len(want), hex(probe)
        if total <= 64 * len(space["mappings"]) and all(m["aliases"] <= 64 for m in space["mappings"]):
            assert vas == want, hex(probe)


def test_espfix_aliases_are_one_group(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = FIXTURES / "qemu-l4"
    by_pa = qemu_map(fixture)
    stack = max(by_pa, key=lambda p: len(by_pa[p]))
    assert len(by_pa[stack]) == 65536  # espfix: 4 PUD × 512 PMD × 32 PTE clones of one page
    r = cli(capsys, "rmap", core(fixture), f"{stack + 8:#x}")
    group = [ln for ln in r.out.splitlines() if "aliases" in ln]
    assert len(group) == 1 and "65536 aliases (the same tables and entries, other indices)" in group[0]
    first, last = min(by_pa[stack]), max(by_pa[stack])
    assert group[0].lstrip().startswith(f"{first + 8:#018x} … {last + 8:#018x}")


def test_pti_user_table_is_searched_too(capsys: pytest.CaptureFixture[str]) -> None:
    """The PTI capture stopped in user mode: CR3 is the user PGD; its kernel PGD is the page before. A page
    of cpu_entry_area is mapped in both."""
    fixture = FIXTURES / "qemu-pti"
    cea = next(t for t in parse_info_tlb(gzip.decompress((fixture / "tlb.txt.gz").read_bytes()).decode())
               if t.va == 0xFFFF_FE00_0000_0000)
    doc = rmap_json(capsys, core(fixture), f"{cea.pa:#x}", "--absent", "zero")
    spaces = doc["address_spaces"]
    assert [s["sources"] for s in spaces] == [["CPU 0"], ["CPU 0 PTI kernel page table"]]
    assert int(spaces[1]["cr3"], 16) == int(spaces[0]["cr3"], 16) & ~0x1000
    for s in spaces:
        assert "0xfffffe0000000000" in [m["va"] for m in s["mappings"]]


def test_symbol_as_physical_address(capsys: pytest.CaptureFixture[str]) -> None:
    doc = rmap_json(capsys, core(NOKASLR), "init_top_pgt", "--symbols", kallsyms(NOKASLR))
    va = guest_address(NOKASLR, "init_top_pgt")
    assert int(doc["pa"], 16) == gva2gpa(NOKASLR)[va] and doc["pa_symbol"] == "init_top_pgt"
    maps = doc["address_spaces"][0]["mappings"]
    assert f"{va:#x}" in [m["va"] for m in maps]
    assert next(m for m in maps if m["va"] == f"{va:#x}")["va_symbol"] == "init_top_pgt"


def hostile_core(tmp_path: Path, distinct: bool) -> tuple[Path, int]:
    """A 4-level PML4 whose 512 entries all point at itself (differing in ignored bits 9-11 and 52-58 when
    ``distinct``): every level reads the same page, so it maps itself at 512**4 VAs."""
    mem = PhysMem()
    pml4 = 0x10_0000
    for i in range(512):
        ignored = ((i & 7) << 9 | (i >> 3) << 52) if distinct else 0
        mem.write_u64(pml4 + 8 * i, pml4 | 0x67 | ignored)
    cpu = CpuState(cr0=0x8005_0033, cr3=pml4, cr4=0x20, segments=(Segment(flags=1 << 21),) + (Segment(),) * 9)
    path = tmp_path / "hostile.elf"
    write_qemu_core(path, sorted(mem.frames.items()), [cpu])
    return path, pml4


@pytest.mark.parametrize("distinct", [False, True])
def test_a_table_mapping_itself_everywhere_is_counted_not_listed(distinct: bool, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path, pml4 = hostile_core(tmp_path, distinct)
    t0 = time.monotonic()
    doc = rmap_json(capsys, str(path), f"{pml4 + 0x10:#x}")
    assert time.monotonic() - t0 < 30  # bounded work, not 68 billion walks (a hang would never get here)
    space = doc["address_spaces"][0]
    assert space["total"] == 512 ** 4 and space["complete"]
    assert len(space["mappings"]) <= 256 and all(len(m["sample_vas"]) <= 64 for m in space["mappings"])
    assert space["mappings"][0]["va"] == "0x10"  # index 0 at every level, offset 0x10


def test_unreadable_tables_make_the_answer_incomplete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mem = PhysMem()
    mem.write_u64(0x10_0000, 0x20_0067)  # PML4[0] → a PDPT the image will not hold
    mem.write_u64(0x10_0008, 0x30_0067)  # PML4[1] → PDPT
    mem.write_u64(0x30_0000, 0x4000_0083)  # 1 GiB page at 1 GiB
    cpu = CpuState(cr0=0x8005_0033, cr3=0x10_0000, cr4=0x20, segments=(Segment(flags=1 << 21),) + (Segment(),) * 9)
    path = tmp_path / "holes.elf"
    write_qemu_core(path, sorted(mem.frames.items()), [cpu])
    r = cli(capsys, "rmap", str(path), "0x40001000")
    assert r.code == 4, r
    assert "0x0000008000001000" in r.out and "incomplete: 1 table(s) could not be read (0x200000)" in r.out
    assert PagingMode.LONG4.value in r.out


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, needle in (([core(NOKASLR), "0x10000000000000"], "does not fit in 52 bits"),
                         ([core(NOKASLR), "init_top_pgt"], "give --symbols FILE"),
                         ([core(NOKASLR), "nope", "--symbols", kallsyms(NOKASLR)], "not in"),
                         ([str(tmp_path / "missing"), "0x1000"], "No such file"),
                         ([core(NOKASLR), "0x1000", "--max-aliases", "65"], "out of range"),
                         ([core(NOKASLR), "0x1000", "--regs", str(tmp_path)], "not a regular file")):
        r = cli(capsys, "rmap", *argv)
        one_line_error(r)
        assert needle in r.err, (argv, r.err)
    assert list(tmp_path.iterdir()) == []
