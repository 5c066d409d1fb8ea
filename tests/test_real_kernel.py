"""The simulator against a real Linux kernel's page tables, with QEMU as the oracle.

For each fixture under tests/fixtures/qemu-*, ``earlymm translate`` runs over every VA QEMU was asked
about with ``gva2gpa``; the physical addresses must agree, and QEMU's ``Unmapped`` must be a fault
(#PF, or #GP for a non-canonical address). ``gva2gpa`` ignores permissions, so each probe is a read
the mapping allows: CPL 3 in the lower half (user pages; a CPL 0 read there faults under SMAP), CPL 0
in the upper half (kernel pages).

The slow test reruns the whole pipeline (boot, capture, minimize) when QEMU and a kernel are present.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earlymm.images.minimize import read_capture_text
from earlymm.images.monitor_text import parse_gva2gpa_file
from tests.qemu_support import need_tools

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CAPTURES = sorted(p for p in FIXTURES.glob("qemu-*") if p.is_dir())
REPO = Path(__file__).resolve().parent.parent


def num(v: object) -> int:
    """A JSON number the CLI prints as a "0x…" string (or, leniently, as a plain integer)."""
    return int(v, 0) if isinstance(v, str) else int(v)  # type: ignore[call-overload]


def translate_all(capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Return one line per disagreement between ``earlymm translate`` and QEMU's gva2gpa."""
    from earlymm.cli.main import main  # the CLI may land after these fixtures

    samples = parse_gva2gpa_file(read_capture_text(capture, "gva2gpa.txt"))
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps({"va": f"{va:#x}", "access": "read", "cpl": 0 if va >> 63 else 3})
                             + "\n" for va, _ in samples))
    capsys.readouterr()
    main(["translate", str(capture / "core.elf.gz"), "--absent", "zero", "--json", "--batch", str(batch)])
    results = json.loads(capsys.readouterr().out)
    assert len(results) == len(samples)
    bad = []
    for (va, want), got in zip(samples, results, strict=True):
        assert num(got["va"]) == va
        pa = num(got["pa"]) if got["pa"] is not None else None
        if want is None:
            if got["ok"] or got["fault"] is None or num(got["fault"]["vector"]) not in (13, 14):
                bad.append(f"{va:#x}: QEMU says Unmapped, simulator gives {got['pa']} {got['fault']}")
        elif not got["ok"] or pa != want:
            bad.append(f"{va:#x}: QEMU {want:#x}, simulator {got['pa']} fault={got['fault']}")
    return bad


@pytest.mark.parametrize("capture", CAPTURES, ids=[p.name for p in CAPTURES])
def test_translate_matches_qemu(capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert translate_all(capture, tmp_path, capsys) == []


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.ci_qemu
def test_capture_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = need_tools("qemu-system-x86_64")
    from earlymm.tools.qemu_capture import main as capture_main

    out, fixture = tmp_path / "cap", tmp_path / "fix"
    assert capture_main(["--kernel", str(kernel), "--out", str(out), "--timeout", "300"]) == 0
    for name in ("registers.txt", "tlb.txt", "mem.txt", "gva2gpa.txt", "core.elf", "console.log", "meta.json",
                 "kallsyms.txt", "memmap.txt"):
        assert (out / name).exists(), name
    assert capture_main(["minimize", str(out), str(fixture)]) == 0
    assert (fixture / "core.elf.gz").stat().st_size < 3 * 1024 * 1024
    assert translate_all(fixture, tmp_path, capsys) == []
    # the guest's own symbols: init_top_pgt resolves where QEMU's gva2gpa (asked at capture time) says
    from earlymm.cli.main import main

    capsys.readouterr()
    main(["translate", str(fixture / "core.elf.gz"), "--symbols", str(fixture / "kallsyms"), "--gva2gpa", "--json",
          "init_top_pgt"])
    (got,) = json.loads(capsys.readouterr().out)
    assert dict(parse_gva2gpa_file(read_capture_text(fixture, "gva2gpa.txt")))[num(got["va"])] == num(got["pa"])
