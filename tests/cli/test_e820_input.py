"""``boot --e820 FILE`` reading (issue 7 item 6, the command-line side): any order, exact errors with line
numbers, and near-linear cost — 100,000 lines are read in one sort, not one scan per line."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from earlymm.cli.boot_args import read_e820
from earlymm.cli.common import UsageError
from earlymm.hw.memory import Region, RegionMap, RegionType


def _map(n: int, seed: int) -> tuple[list[str], list[tuple[int, int, str]]]:
    """n disjoint ranges with gaps between them, as shuffled lines, and the ranges in address order."""
    rng = random.Random(seed)
    ranges, at = [], 0
    for i in range(n):
        start = at + rng.randrange(1, 16) * 0x1000
        end = start + rng.randrange(1, 64) * 0x1000
        ranges.append((start, end, ("ram", "reserved", "acpi", "nvs")[i % 4]))
        at = end
    lines = [f"{s:#x} {e:#x} {t}" for s, e, t in ranges]
    rng.shuffle(lines)
    return lines, ranges


def test_any_order_is_read_into_address_order(tmp_path: Path) -> None:
    lines, ranges = _map(1000, 1)
    f = tmp_path / "m.e820"
    f.write_text("# shuffled\n" + "\n".join(lines) + "\n")
    assert [(r.start, r.end, r.kind.value) for r in read_e820(str(f))] == ranges


def test_an_overlap_names_both_lines(tmp_path: Path) -> None:
    f = tmp_path / "m.e820"
    f.write_text("0x100000 0x200000 ram\n0x0 0x9f000 ram\n0x1ff000 0x300000 reserved\n")
    with pytest.raises(UsageError, match=r"m\.e820:3: \[0x1ff000, 0x300000\) overlaps \[0x100000, 0x200000\) "
                                         r"from line 1"):
        read_e820(str(f))


@pytest.mark.parametrize("text, needle", [("0 0x1000\n", "expected 'START END TYPE'"),
                                          ("0 00001000 ram\n", "ambiguous"), ("0 0x1_000 ram\n", "separators"),
                                          ("0x10000000000000 0x10000000001000 ram\n", "does not fit in 52 bits"),
                                          ("x" * 5000 + "\n", "line longer than 4096"), ("\n# only\n", "no ranges")])
def test_bad_lines(text: str, needle: str, tmp_path: Path) -> None:
    f = tmp_path / "m.e820"
    f.write_text(text)
    with pytest.raises(UsageError, match=needle):
        read_e820(str(f))


def test_region_map_lookups_and_incremental_adds_agree_with_a_scan() -> None:
    _lines, ranges = _map(500, 2)
    regions = [Region(s, e, RegionType(t)) for s, e, t in ranges]
    bulk = RegionMap(reversed(regions))
    step = RegionMap()
    for r in regions[::-1]:
        step.add(r)
    assert list(bulk) == list(step) == regions
    rng = random.Random(3)
    for pa in [rng.randrange(0, ranges[-1][1] + 0x10000) for _ in range(2000)]:
        want = next((r.kind for r in regions if r.start <= pa < r.end), RegionType.ABSENT)
        assert bulk.kind(pa) == want
    with pytest.raises(ValueError, match="overlaps"):
        step.add(Region(regions[10].start + 0x1000 - 1, regions[10].start + 0x1000, RegionType.RAM))


def test_100000_lines_are_read_in_bounded_time(tmp_path: Path) -> None:
    """The old reader re-scanned and re-sorted the map for every line (O(n² log n): hours for 100,000
    lines). A bound, not a benchmark: bench/bench_e820.py measures the cost per line."""
    lines, ranges = _map(100_000, 4)
    f = tmp_path / "big.e820"
    f.write_text("\n".join(lines) + "\n")
    code = ("import sys; from earlymm.cli.boot_args import read_e820; "
            f"r = read_e820({str(f)!r}); print(len(r), r[0].start, r[-1].end)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == [str(len(ranges)), str(ranges[0][0]), str(ranges[-1][1])]
