"""``--format linux``: the kernel's debugfs page_tables, checked against QEMU's view of the same guest."""

from __future__ import annotations

import itertools
import re
from bisect import bisect_right
from pathlib import Path

import pytest

from earlymm.arch.modes import PagingMode
from earlymm.images.monitor_text import parse_info_tlb
from earlymm.tools.ptdump import linux
from earlymm.tools.ptdump.regions import Marker
from tests.ptdump.support import FIXTURE_IDS, FIXTURES, build, cli, core_of, raw_text

LINE = re.compile(r"^0x([0-9a-f]{16})-0x([0-9a-f]{16})   (?: *\d{1,9}|\d{10,})[BKMGTPE] (.{30})(pgd|p4d|pud|pmd|pte)$")
MARKERS = ["User Space", "Kernel Space", "LDT remap", "Low Kernel Mapping", "vmalloc() Area", "Vmemmap",
           "CPU entry Area", "ESPfix Area", "EFI Runtime Services", "High Kernel Mapping", "Modules",
           "End Modules", "Fixmap Area"]


def parse(text: str) -> tuple[list[str], list[tuple[int, int, str, str]]]:
    markers, lines = [], []
    for ln in text.splitlines():
        if ln.startswith("---["):
            markers.append(ln[5:-5])
        elif m := LINE.match(ln):
            lines.append((int(m[1], 16), int(m[2], 16), m[3], m[4]))
        else:
            assert ln.startswith("... ") and ln.endswith(" ... "), ln
    return markers, lines


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_structure_markers_and_the_kernels_quirks(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, str(core_of(fixture)))
    assert r.code == 0 and r.err == ""
    markers, lines = parse(r.out)
    # A marker is printed only when a call reaches it: a PTI user table ends in one empty pud at Modules.
    assert markers == MARKERS[:len(markers)] and len(markers) >= MARKERS.index("Modules") + 1
    assert lines[0][0] == 0 and lines[-1][1] == 0  # the final flush is note_page(0, -1, 0)
    # Contiguous from 0 round to 0, except where espfix's lines past the 16th were skipped.
    text = r.out
    skip = re.search(r"^\.\.\. (\d+) entries skipped \.\.\. $", text, re.M)
    assert skip is not None and int(skip[1]) > 100_000
    espfix = text[text.index("---[ ESPfix Area ]---"):text.index("... ")].count("\n") - 1
    assert espfix == 16
    breaks = sum(1 for a, b in itertools.pairwise(lines) if a[1] != b[0])
    assert breaks == 1


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_every_qemu_leaf_lies_in_a_line_with_its_flags(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QEMU's info tlb (an independent walk) against the Linux lines: each present leaf outside espfix's
    skipped lines is inside a present line whose USR/RW/GLB/NX columns match the leaf (Linux's upper
    entries never restrict their leaves, so effective == leaf here)."""
    _m, lines = parse(cli(capsys, str(core_of(fixture))).out)
    starts = [ln[0] for ln in lines]
    checked = skipped = 0
    for t in parse_info_tlb(raw_text(fixture, "tlb.txt").decode()):
        i = bisect_right(starts, t.va) - 1
        s, e, cols, _lvl = lines[i]
        if not s <= t.va < (e or 1 << 64):
            assert 0xFFFF_FF00_0000_0000 <= t.va < 0xFFFF_FF80_0000_0000  # espfix, past the 16 shown lines
            skipped += 1
            continue
        assert cols.startswith("USR" if t.flags[7] == "U" else "   "), (hex(t.va), cols)
        assert cols[4:6] == ("RW" if t.flags[8] == "W" else "ro"), (hex(t.va), cols)
        assert ("GLB" in cols) == (t.flags[1] == "G") and ("NX" in cols) == (t.flags[0] == "X"), (hex(t.va), cols)
        checked += 1
    assert checked > 80 and skipped < 65536


def _marker(text: str, name: str) -> int:
    after = text[text.index(f"---[ {name} ]---"):].splitlines()[1]
    return int(after[2:18], 16)


def test_kaslr_bases_are_found_from_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = next(p for p in FIXTURES if "kaslr" in p.name)
    tlb = parse_info_tlb(raw_text(fixture, "tlb.txt").decode())
    page_offset = next(t.va for t in tlb if t.pa == 0 and t.va >> 63)  # the direct map maps physical 0
    assert page_offset not in (0xFFFF_8880_0000_0000, 0xFF11_0000_0000_0000)  # randomized
    text = cli(capsys, str(core_of(fixture))).out
    # The marker is printed once the first line at or past it ends (the kernel's one-call lag), so the
    # first line under "Low Kernel Mapping" starts just after the first direct-map call.
    assert _marker(text, "Low Kernel Mapping") - page_offset in (0, 0x1000, 1 << 21, 1 << 30)
    vm = next(t.va for t in tlb if t.va > page_offset + (1 << 40) and t.va < 0xFFD0_0000_0000_0000)
    assert _marker(text, "vmalloc() Area") == vm
    vmemmap = _marker(text, "Vmemmap")
    assert vmemmap % (1 << 30) == 0 and any(t.va == vmemmap and t.flags[2] == "P" for t in tlb)


def test_five_level_dumps_show_p4d_holes(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = next(p for p in FIXTURES if "l5" in p.name)
    _m, lines = parse(cli(capsys, str(core_of(fixture))).out)
    assert any(lvl == "p4d" for *_x, lvl in lines)
    assert lines[0][1] != 0


def test_state_machine_cuts_runs_exactly_at_markers() -> None:
    """One run of 512 identical calls crossing two markers is cut at the first call at or past each."""
    st = linux._State([Marker(0, "A"), Marker(0x5800, "B"), Marker(0x9000, "C"), Marker((1 << 64) - 1, None)],
                      out := [], False)
    st.run(0, 0x8000_0000_0000_0063, 2, 4, 0x1000, 16)
    st.note(0, -1, 0, 0)
    assert out == ["---[ A ]---\n",
                   "0x0000000000000000-0x0000000000006000          24K     RW                     NX pte\n",
                   "---[ B ]---\n",
                   "0x0000000000006000-0x0000000000009000          12K     RW                     NX pte\n",
                   "---[ C ]---\n",
                   f"0x0000000000009000-0x0000000000000000   {((1 << 64) - 0x9000) >> 10}K"
                   "     RW                     NX pte\n"]


def test_large_page_pat_is_masked_like_the_kernel_and_4k_pat_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    b = build(PagingMode.LONG4)
    b.mapper.map_page(0xFFFF_8880_0020_0000, 0x20_0000, 1 << 21, 0x1002)  # PAT_LARGE (bit 12)
    b.mapper.map_page(0xFFFF_8880_0040_0000, 0x40_0000, 4096, 0x82)  # PAT (bit 7) of a PTE
    space = b.space()
    tree = space.tree("linux", keep_nonpresent=True)
    from earlymm.tools.ptdump.audit import layout_of

    text, _ = linux.dump(tree, layout_of(space).markers())
    large = next(ln for ln in text.splitlines() if ln.startswith("0xffff888000200000"))
    small = next(ln for ln in text.splitlines() if ln.startswith("0xffff888000400000"))
    assert "PSE" in large and "PAT" not in large  # note_page masks bit 12 with PTE_FLAGS_MASK
    assert "PAT" in small


@pytest.mark.parametrize("fmt", ["linux", "qemu-tlb", "json"])
def test_notes_inside_shared_sub_tables_carry_their_virtual_addresses(
        fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 7 item 9: a table the dump replays from a cache (here a PD used by PUD entries 510 and 511)
    holds a PDE whose page table is not in the image; the note is at each address that PDE maps, not
    at the PDE's offset inside the PD (the linux format printed 0x3f400000 for 0xffffffffff400000)."""
    from earlymm.images import CpuState, write_qemu_core

    b = build(PagingMode.LONG4)
    b.mapper.map(0xFFFF_FFFF_8100_0000, 0x40_0000, 0x1000, 0x2)
    pud = (b.mem.read_u64(b.mapper.root + 511 * 8) & ~0xFFF) & ((1 << 52) - 1)
    pd = b.mem.read_u64(pud + 510 * 8) & ~0xFFF & ((1 << 52) - 1)  # 0xffffffff81000000 is in PUD slot 510
    assert pd
    b.mem.write_u64(pud + 511 * 8, pd | 0x63)  # slot 511 shares it
    b.mem.write_u64(pd + 506 * 8, 0x7FF_F000 | 0x63)  # a page table the core will not hold
    core = tmp_path / "shared.core"
    write_qemu_core(core, [(p, bytes(b.mem.frame(p) or b"")) for p in b.mem.written_pfns()],
                    [CpuState(cr0=0x8005_0033, cr3=b.mapper.root, cr4=0x20)])
    r = cli(capsys, str(core), "--efer", "0xd01", "--format", fmt)
    assert r.code == 0
    # PGD 511, PUD 510 or 511, PD 506: 0xffff_ff80_0000_0000 + (510 or 511) << 30 + 506 << 21
    spans = ["0xffffffffbf400000-0xffffffffbf600000", "0xffffffffff400000-0xffffffffff600000"]
    detail = "PDE 0x7fff063 points at table 0x7fff000, which is not in the image"
    if fmt == "json":
        import json

        notes = json.loads(r.out)["address_spaces"][0]["notes"]
        assert [(n["va"], n["end"], n["detail"]) for n in notes] == [
            ("0xffffffffbf400000", "0xffffffffbf600000", detail), ("0xffffffffff400000", "0xffffffffff600000", detail)]
    else:
        assert r.err.splitlines() == [f"earlymm ptdump: unreadable {s}: {detail}" for s in spans]
