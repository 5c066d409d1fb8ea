"""``earlymm diff``: a real kernel stopped at three points of its boot (QEMU's info tlb at each stop is the
oracle for mappings; the cores' raw bytes and the minimizer's independent table walk for table pages), two
CR3s of one core, and two phases of earlymm's own boot model (checked against the spec's §3.4–3.5).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import pytest

from earlymm.images import open_image
from earlymm.images.minimize import table_pfns
from tests.inspect.support import FIXTURES, cli, one_line_error, tlb_leaves

MIDBOOT = [FIXTURES / n for n in ("midboot-qemu64-512m", "midboot-max-4g-memmap")]
STOPS = ("x86_64_start_kernel", "init_mem_mapping", "idt_setup_early_pf")
PAGE_OFFSET_V39 = 0xFFFF_8800_0000_0000  # the model's v3.9 direct map base (spec §2)
AD_LETTERS = str.maketrans("", "", "DA")


def diff_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = cli(capsys, "diff", *argv, "--json")
    assert r.code in (0, 1), r.err
    doc: dict = json.loads(r.out)  # type: ignore[type-arg]
    return r.code, doc


class Leaves:
    """QEMU's leaves of one stop, looked up by VA."""

    def __init__(self, fixture: Path, stop: str) -> None:
        self.items = sorted(tlb_leaves(fixture, f"{stop}.tlb.txt.gz", f"{stop}.core.elf.gz"))
        self.starts = [va for va, *_r in self.items]

    def at(self, va: int) -> tuple[int, int, str] | None:
        """(PA of ``va``, page size, flags without Accessed/Dirty) or None."""
        i = bisect.bisect_right(self.starts, va) - 1
        if i < 0:
            return None
        start, pa, size, flags = self.items[i]
        return (pa + va - start, size, flags.translate(AD_LETTERS)) if va < start + size else None


def run_of(runs: list[dict], va: int) -> str | None:  # type: ignore[type-arg]
    for r in runs:
        if int(r["va"], 16) <= va < int(r["end"], 16):
            return str(r["change"])
    return None


@pytest.mark.parametrize("fixture", MIDBOOT, ids=[p.name for p in MIDBOOT])
@pytest.mark.parametrize("a, b", [(STOPS[0], STOPS[1]), (STOPS[1], STOPS[2]), (STOPS[0], STOPS[2])])
def test_mappings_change_as_qemu_saw_them(fixture: Path, a: str, b: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = diff_json(capsys, str(fixture / f"{a}.core.elf.gz"), str(fixture / f"{b}.core.elf.gz"))
    la, lb = Leaves(fixture, a), Leaves(fixture, b)
    runs = doc["mappings"]
    assert code == 1 and runs
    for va in sorted(set(la.starts) | set(lb.starts)):
        old, new = la.at(va), lb.at(va)
        want = None if old == new else "added" if old is None else "removed" if new is None else "changed"
        assert run_of(runs, va) == want, (hex(va), old, new)
    for r in runs:  # and each run is what QEMU shows at its start
        va = int(r["va"], 16)
        old, new = la.at(va), lb.at(va)
        assert (old is None) == (r["old"] is None) and (new is None) == (r["new"] is None), r
        if new is not None:
            assert int(r["new"]["pa"], 16) == new[0] and int(r["new"]["page_size"], 16) == new[1], r


@pytest.mark.parametrize("fixture", MIDBOOT, ids=[p.name for p in MIDBOOT])
def test_table_pages_against_the_raw_cores(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = (str(fixture / f"{s}.core.elf.gz") for s in (STOPS[0], STOPS[2]))
    _code, doc = diff_json(capsys, a, b)
    with open_image(a) as ia, open_image(b) as ib:
        ta, tb = table_pfns(ia, ia.cpus[0])[0], table_pfns(ib, ib.cpus[0])[0]
        tables = {int(t["table"], 16) >> 12: t for t in doc["tables"]}
        assert {p for p, t in tables.items() if t["change"] == "added"} == tb - ta
        assert {p for p, t in tables.items() if t["change"] == "removed"} == ta - tb
        for pfn in ta & tb:
            old, new = bytes(ia.frame(pfn) or b""), bytes(ib.frame(pfn) or b"")
            words = [(i, int.from_bytes(old[8 * i:8 * i + 8], "little"), int.from_bytes(new[8 * i:8 * i + 8], "little"))
                     for i in range(512) if old[8 * i:8 * i + 8] != new[8 * i:8 * i + 8]]
            if not words:
                assert pfn not in tables or tables[pfn]["old_levels"] != tables[pfn]["new_levels"]
                continue
            got = [(e["index"], int(e["old"], 16), int(e["new"], 16)) for e in tables[pfn]["entries"]]
            assert tables[pfn]["change"] == "changed" and got == words


def test_two_cr3s_of_one_core(capsys: pytest.CaptureFixture[str]) -> None:
    """At idt_setup_early_pf the kernel runs on init_top_pgt; early_top_pgt is still in memory. Both
    are in the same core, so no table page can differ in content: only which tables each uses."""
    fx = FIXTURES / "midboot-qemu64-512m"
    core = str(fx / "idt_setup_early_pf.core.elf.gz")
    roots = json.loads((fx / "idt_setup_early_pf.json").read_text())["roots"]
    code, doc = diff_json(capsys, core, core, "--cr3-a", roots["early_top_pgt"], "--cr3-b", roots["init_top_pgt"])
    assert code == 1 and doc["a"]["cr3"] == roots["early_top_pgt"] and doc["b"]["cr3"] == roots["init_top_pgt"]
    assert all(t["change"] != "changed" or not t["entries"] for t in doc["tables"])
    same = cli(capsys, "diff", core, core)
    assert same.code == 0 and "mappings: 0 added, 0 removed, 0 changed" in same.out


def test_boot_phases_follow_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    """startup_64 → x86_64_start_kernel (spec §3.3–3.5, kernel at 16 MiB, image 24 MiB): the switchover
    identity map and its aliases (PGD[0],[1] → PUD; PUD[0],[1] → PMD; PMD[8..19]) are removed, early #PFs
    add 2 MiB direct-map pages at pa = va − PAGE_OFFSET, the kernel-image mapping is untouched; the PGD
    (early_top_pgt) loses entries 0 and 1 and gains entry 272 (PAGE_OFFSET's)."""
    code, doc = diff_json(capsys, "boot:startup_64", "boot:x86_64_start_kernel")
    assert code == 1
    removed = [(int(r["va"], 16), int(r["end"], 16), int(r["old"]["pa"], 16)) for r in doc["mappings"]
               if r["change"] == "removed"]
    image = (0x100_0000, 0x280_0000)
    assert removed == [(base + image[0], base + image[1], image[0])
                       for base in (0, 1 << 30, 1 << 39, (1 << 39) + (1 << 30))]
    added = [r for r in doc["mappings"] if r["change"] == "added"]
    assert added and all(int(r["va"], 16) >= PAGE_OFFSET_V39 and int(r["new"]["pa"], 16) == int(r["va"], 16)
                         - PAGE_OFFSET_V39 and r["new"]["page_size"] == "0x200000" for r in added)
    assert not [r for r in doc["mappings"] if int(r["va"], 16) >= 0xFFFF_FFFF_8000_0000]
    pgd = next(t for t in doc["tables"] if t["table_symbol"] == "early_top_pgt")
    assert [(e["index"], e["new"] == "0x0") for e in pgd["entries"]] == [(0, True), (1, True), (272, False)]


def test_text_output_and_identical_phases(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "diff", "boot:startup_64", "boot:x86_64_start_kernel")
    lines = r.out.splitlines()
    assert lines[0].startswith("--- A: boot:startup_64 (cr3 ")
    assert lines[1].startswith("+++ B: boot:x86_64_start_kernel")
    assert "- 0x0000000001000000-0x0000000002800000    24M  pa 0x1000000 2M SWX → (unmapped)" in lines
    assert any(ln.startswith("~ table ") and "<early_top_pgt> (PML4): 3 entries changed" in ln for ln in lines)
    same = cli(capsys, "diff", "boot:end", "boot:end", "--boot-args", "--mem 2G")
    assert same.code == 0 and "mappings: 0 added, 0 removed, 0 changed" in same.out


def test_accessed_dirty_only_with_include_ad(capsys: pytest.CaptureFixture[str]) -> None:
    fx = FIXTURES / "midboot-qemu64-512m"
    a, b = (str(fx / f"{s}.core.elf.gz") for s in (STOPS[1], STOPS[2]))
    plain = diff_json(capsys, a, b)[1]["mappings"]
    with_ad = diff_json(capsys, a, b, "--include-ad")[1]["mappings"]
    assert len(with_ad) >= len(plain)


@pytest.mark.parametrize("argv, needle", [
    (["boot:nowhere", "boot:end"], "unknown phase"),
    (["boot:end", "boot:end", "--boot-args", "--until end"], "does not apply"),
    (["boot:end", "boot:end", "--boot-args", "--mem"], "expected one argument"),
    (["boot:end", "boot:end", "--boot-args", "'unclosed"], "quotation"),
    (["boot:end", "boot:end", "--cr3-a", "0x1000"], "applies to an image"),
    ([str(FIXTURES / "qemu-l4" / "core.elf.gz"), "boot:end", "--cpu-a", "3"], "1 CPU(s)"),
    ([str(FIXTURES / "qemu-l4" / "core.elf.gz"), str(FIXTURES / "qemu-l4" / "core.elf.gz"), "--boot-args", "--mem 1G"],
     "neither A nor B"),
    (["/nonexistent", "boot:end"], "No such file"),
])
def test_bad_input(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "diff", *argv)
    one_line_error(r)
    assert needle in r.err, r.err
