"""An audit never says "passed" about tables it could not read (issue 7 item 2): it says "incomplete",
lists what it did not examine and exits 4 (1 when it also has findings)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from earlymm.arch.modes import Level, PagingMode
from earlymm.images import CpuState, open_image, write_qemu_core
from earlymm.images.minimize import table_pfns
from tests.ptdump.support import FIXTURES, build, cli, core_of

NX = 1 << 63
P, RW, US, PS = 1, 2, 4, 0x80
L4 = next(p for p in FIXTURES if p.name == "qemu-l4")
MAX5G = next(p for p in FIXTURES if p.name == "qemu-max-5g")


def test_help_documents_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "--help")
    text = " ".join(r.out.split())
    assert r.code == 0 and "4 an audit is incomplete" in text and "'passed' only when it read everything" in text


@pytest.mark.parametrize("check", ["--check-wx", "--check-user-kernel"])
def test_top_level_table_absent(check: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, str(core_of(L4)), check, "--cr3", "0x40000000")  # beyond the guest's 512 MiB
    assert r.code == 4
    assert r.out.splitlines() == ["incomplete: unreadable 0x0000000000000000-0x10000000000000000: top-level table "
                                  "0x40000000 is not in the image"]
    assert "passed" not in r.err and "incomplete" in r.err


def _truncated_below_a_table(fixture: Path, tmp_path: Path) -> tuple[Path, int]:
    """The fixture's core, uncompressed, cut at the file offset of its highest page-table page."""
    raw = tmp_path / "core.elf"
    raw.write_bytes(gzip.decompress(core_of(fixture).read_bytes()))
    with open_image(raw) as img:
        tables = table_pfns(img, img.cpus[0])[0]  # the minimizer's own walk, not the audited one
        pa = max(tables) << 12
        seg = next(s for s in img.segments if s.start <= pa < s.end)
        cut = seg.offset + pa - seg.start
    with open(raw, "r+b") as f:
        f.truncate(cut)
    return raw, pa


@pytest.mark.parametrize("fixture, check", [(L4, "--check-wx"), (MAX5G, "--check-user-kernel")],
                         ids=["l4-wx", "max5g-user-kernel"])
@pytest.mark.parametrize("absent", [[], ["--absent", "zero"]], ids=["default", "absent-zero"])
def test_a_truncated_core_hiding_tables_is_incomplete(fixture: Path, check: str, absent: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # Both fixtures pass these checks when whole (the kernel's own boot verdict; test_audits.py).
    assert cli(capsys, str(core_of(fixture)), check).code == 0
    raw, lost_from = _truncated_below_a_table(fixture, tmp_path)
    r = cli(capsys, str(raw), check, *absent)
    assert r.code == 4, r.err
    gaps = r.out.splitlines()
    assert gaps and all(g.startswith("incomplete: unreadable 0x") for g in gaps)
    # each names a table at or beyond the cut (zeros there would be a guess, even with --absent zero)
    assert all(int(g.split("points at table ")[1].split(",")[0], 16) >= lost_from for g in gaps)
    assert "passed" not in r.err and "truncated" in r.err
    assert f"audit incomplete: {len(gaps)} range(s) could not be examined" in r.err


def _core(tmp_path: Path, b: object, cr4: int = 0x20) -> Path:
    mem = b.mem  # type: ignore[attr-defined]
    root = b.mapper.root  # type: ignore[attr-defined]
    path = tmp_path / "t.core"
    write_qemu_core(path, [(p, bytes(mem.frame(p) or b"")) for p in mem.written_pfns()],
                    [CpuState(cr0=0x8005_0033, cr3=root, cr4=cr4)])
    return path


def test_collapsed_repeats_make_the_audit_incomplete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = build(PagingMode.LONG4)
    root = b.mapper.root
    for i in range(512):  # every entry points at the top table itself, no-execute: no W+X anywhere
        b.mem.write_u64(root + 8 * i, root | P | RW | NX)
    core = str(_core(tmp_path, b, cr4=0x20 | 1 << 20))
    # The W+X walk replays each table's merged runs, so it does examine all 512**4 aliases: a verdict.
    r = cli(capsys, core, "--check-wx", "--efer", "0xd01")
    assert (r.code, r.out) == (0, "") and "passed" in r.err
    # The user/kernel check lists leaves, and collapses repeats past --max-leaves: not examined.
    r = cli(capsys, core, "--check-user-kernel", "--efer", "0xd01")
    assert r.code == 4
    assert r.out and all(ln.startswith("incomplete: collapsed ") for ln in r.out.splitlines())
    assert "user/kernel isolation: incomplete, 0 finding(s)" in r.err


def test_findings_and_gaps_exit_1_and_list_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = build(PagingMode.LONG4)
    b.mapper.map(0xFFFF_FFFF_8100_0000, 0x40_0000, 0x1000, RW)  # W+X
    b.mapper.map(0xFFFF_FFFF_C000_0000, 0x50_0000, 0x1000, RW | NX)
    core = _core(tmp_path, b)
    pde = b.mapper.get_entry(0xFFFF_FFFF_C000_0000, Level.PD)
    assert pde is not None
    pt = pde & 0x000F_FFFF_FFFF_F000  # the second mapping's PTE table: left out of the core
    frames = [(p, bytes(b.mem.frame(p) or b"")) for p in b.mem.written_pfns() if p != pt >> 12]
    write_qemu_core(core, frames, [CpuState(cr0=0x8005_0033, cr3=b.mapper.root, cr4=0x20)])
    r = cli(capsys, str(core), "--check-wx", "--efer", "0xd01")
    lines = r.out.splitlines()
    assert r.code == 1
    assert lines[0].startswith("W+X: 0xffffffff81000000-0xffffffff81001000 4K")
    assert lines[1] == (f"incomplete: unreadable 0xffffffffc0000000-0xffffffffc0200000: PDE {pde:#x} points "
                        f"at table {pt:#x}, which is not in the image")
    assert "Checked W+X mappings: incomplete, 1 W+X pages found in what could be read" in r.err


def test_other_notes_are_printed_in_audit_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = build(PagingMode.LONG4)
    b.mapper.map(0x1000, 0x40_0000, 0x1000, RW | NX)
    table = b.table()
    b.mem.write_u64(b.mapper.root + 8, table | P | RW | PS)  # PS in a PML4E: reserved, the walk faults
    r = cli(capsys, str(_core(tmp_path, b, cr4=0x20 | 1 << 20)), "--check-user-kernel", "--efer", "0xd01")
    assert (r.code, r.out) == (0, "")  # read in full: nothing unexamined, nothing found
    assert (f"note: reserved-bits 0x0000008000000000-0x0000010000000000: PML4E {table | P | RW | PS:#x} has reserved "
            "bits set (any access faults)") in r.err.splitlines()
