"""The committed QEMU fixtures are self-consistent: the minimized core, the CPU note, the monitor text.

A deliberately naive walk (no permission or reserved-bit checks, which is what QEMU's ``gva2gpa``
does) over the minimized core must reproduce every ``gva2gpa`` answer QEMU gave. This checks the
reader and the minimizer without depending on the simulator's walker.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from earlymm.images import CpuState, SegmentImage, open_image
from earlymm.images.minimize import read_capture_text, table_pfns
from earlymm.images.monitor_text import parse_gva2gpa_file, parse_info_mem, parse_info_tlb

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CAPTURES = sorted(p for p in FIXTURES.glob("qemu-*") if p.is_dir())
ADDR = 0x000F_FFFF_FFFF_F000


def naive_translate(img: SegmentImage, cpu: CpuState, va: int) -> int | None:
    levels = 5 if cpu.cr4 >> 12 & 1 else 4
    width = 9 * levels + 12
    top = va >> (width - 1)
    if top not in (0, (1 << (65 - width)) - 1):
        return None
    table = cpu.cr3 & ADDR
    for level in range(levels, 0, -1):
        shift = 12 + 9 * (level - 1)
        frame = img.frame(table >> 12)
        entry = struct.unpack_from("<Q", frame, 8 * (va >> shift & 511))[0] if frame is not None else 0
        if not entry & 1:
            return None
        if level == 1 or (level in (2, 3) and entry & 0x80):
            size = 1 << shift
            return (entry & ADDR & ~(size - 1)) | (va & (size - 1))
        table = entry & ADDR
    raise AssertionError("unreachable")


@pytest.fixture(params=CAPTURES, ids=[p.name for p in CAPTURES])
def capture(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_fixtures_exist() -> None:
    assert {p.name for p in CAPTURES} >= {"qemu-l4", "qemu-l5"}


def test_fixture_is_small(capture: Path) -> None:
    assert sum(f.stat().st_size for f in capture.iterdir()) <= 3 * 1024 * 1024


def test_gva2gpa_reproduced_by_naive_walk(capture: Path) -> None:
    samples = parse_gva2gpa_file(read_capture_text(capture, "gva2gpa.txt"))
    assert len(samples) >= 300
    assert sum(pa is None for _va, pa in samples) >= 20
    with open_image(capture / "core.elf.gz") as img:
        cpu = img.cpus[0]
        wrong = [(hex(va), pa, naive_translate(img, cpu, va)) for va, pa in samples
                 if naive_translate(img, cpu, va) != pa]
    assert wrong == []


def test_cpu_note_matches_info_registers(capture: Path) -> None:
    regs = read_capture_text(capture, "registers.txt")
    crs = {k: int(v, 16) for k, v in re.findall(r"(CR[0234])=([0-9a-f]+)", regs)}
    rip = int(re.search(r"RIP=([0-9a-f]+)", regs)[1], 16)  # type: ignore[index]
    with open_image(capture / "core.elf.gz") as img:
        assert len(img.cpus) == 1
        cpu = img.cpus[0]
        assert (cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4) == (crs["CR0"], crs["CR2"], crs["CR3"], crs["CR4"])
        assert cpu.rip == rip and cpu.is_64bit_code
        meta = json.loads(read_capture_text(capture, "meta.json"))
        assert bool(cpu.cr4 >> 12 & 1) == meta["la57"]


def test_all_reachable_tables_kept(capture: Path) -> None:
    with open_image(capture / "core.elf.gz") as img:
        found, missing = table_pfns(img, img.cpus[0])
    summary = json.loads((capture / "minimize.json").read_text())
    assert missing == set() and len(found) == summary["table_pages"]


def test_monitor_text_parses(capture: Path) -> None:
    tlb = parse_info_tlb(read_capture_text(capture, "tlb.txt"))
    assert len(tlb) > 1000
    assert all(t.pa & 0xFFF == 0 for t in tlb)
    large = [t for t in tlb if t.flags[2] == "P"]  # PS: the direct map uses 2 MiB pages
    assert large and all(t.va & 0x1FFFFF == 0 and t.pa & 0x1FFFFF == 0 for t in large)
    mem = parse_info_mem(read_capture_text(capture, "mem.txt"))
    la57 = json.loads(read_capture_text(capture, "meta.json"))["la57"]
    # QEMU 7.2's 5-level `info mem` walker tests the present bit backwards and prints nothing.
    assert (mem == []) == la57
