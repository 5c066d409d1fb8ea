"""The kernel's own e820 handling (issue 7 item 6, issue 9): maps longer than the zero page's 128 slots
continue in SETUP_E820_EXT setup data as Linux reads them (never silently cut), mem=/memmap= edit the
map exactly as the real 6.1 kernel printed it (mid-boot fixtures' consoles), partial pages are trimmed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from earlymm.hw.memory import Region, RegionType
from earlymm.kernel import e820
from earlymm.kernel.phases import Phase
from tests.kernel.conftest import make_boot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LINE = re.compile(r"\] (BIOS-e820|user): \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] (.+)$")


def fragmented(n: int) -> list[Region]:
    regs = [Region(0, 0x9FC00, RegionType.RAM), Region(0x10_0000, 0x1000_0000, RegionType.RAM)]
    a = 0x1000_0000
    for _ in range(n):
        regs += [Region(a, a + 0x10_0000, RegionType.RAM), Region(a + 0x10_0000, a + 0x10_1000, RegionType.RESERVED)]
        a += 0x10_1000
    return regs


def bios_lines(r: object) -> list[str]:
    return [ln for ln in r.ctx.console if ln.startswith("BIOS-e820:")]  # type: ignore[attr-defined]


def test_more_than_128_entries_arrive_through_setup_data() -> None:
    """boot_params holds 128 entries; the rest come from a SETUP_E820_EXT node (parse_setup_data), and
    e820__memory_setup_extended prints the whole table again as 'extended' (e820.c @ 6.1; v3.9's
    parse_e820_ext likewise)."""
    r = make_boot(e820=fragmented(200), until=Phase.SETUP_ARCH)
    assert r.outcome == "stopped"
    # boot_params' 128, sanitised: the adjacent RAM at 0x10000000 merges into one (e820__update_table)
    assert len(bios_lines(r)) == 128 - 1
    ext = [ln for ln in r.ctx.console if ln.startswith("extended: ")]
    # every entry, none cut at 128
    assert len(ext) == 2 + 400 - 1
    assert ext[-1].endswith("reserved")


def test_beyond_e820_max_entries_the_kernel_says_what_it_ignores() -> None:
    """E820_MAX_ENTRIES (128 + 3 × MAX_NUMNODES): the rest is reported one line each, as e820.c does."""
    r = make_boot(e820=fragmented(1700), until=Phase.SETUP_ARCH)
    ignored = [ln for ln in r.ctx.console if ln.startswith("e820: too many entries; ignoring")]
    # boot_params' 128 are sanitised first (e820__memory_setup_default: the adjacent RAM at 0x10000000 merges,
    # 127 entries), so the SETUP_E820_EXT node's entries find one slot more than a single append would
    assert len(ignored) == (2 + 3400 - 128) - (e820.E820_MAX_ENTRIES - 127)


def test_setup_data_larger_than_an_early_mapping_is_not_silently_cut() -> None:
    """__early_ioremap refuses more than NR_FIX_BTMAPS (64) pages with a WARN and returns NULL, which the
    e820 code dereferences: a panic on the console, not a shortened map."""
    r = make_boot(e820=fragmented(7000), until=Phase.SETUP_ARCH)
    assert r.outcome == "panic"
    assert any(ln.startswith("WARNING: __early_ioremap") for ln in r.ctx.console)


@pytest.mark.parametrize("name", ["midboot-qemu64-4g-mem1500m", "midboot-max-4g-memmap", "midboot-qemu64-2g-memmap",
                                  "midboot-max-12g-mem5g"])
def test_mem_and_memmap_edit_the_map_as_the_real_kernel_printed_it(name: str) -> None:
    console = (FIXTURES / name / "console.log").read_text()
    cmdline = next(ln.split("Command line: ", 1)[1] for ln in console.splitlines() if "Command line: " in ln)
    printed = {"BIOS-e820": [], "user": []}  # type: dict[str, list[tuple[int, int, str]]]
    for ln in console.splitlines():
        m = LINE.search(ln)
        if m:
            printed[m[1]].append((int(m[2], 16), int(m[3], 16) + 1, m[4]))
    table = e820.E820Table()
    kinds = {"usable": 1, "reserved": 2, "ACPI data": 3, "ACPI NVS": 4}
    for s, end, kind in printed["BIOS-e820"]:
        table.append(s, end - s, kinds[kind])
    table.update_table()
    assert e820.parse_mem_options(table, cmdline) == []
    got = [LINE.search("] " + ln) for ln in table.lines("user")]
    assert [(int(m[2], 16), int(m[3], 16) + 1, m[4]) for m in got if m] == printed["user"]


def test_trim_bios_range_and_partial_pages() -> None:
    """setup.c trim_bios_range: page 0 becomes reserved, 640 KiB–1 MiB is not RAM; memblock then trims the
    partial page at 0x9fc00 (memblock_trim_memory) — the fixtures' memblock dump shows 0x1000-0x9efff."""
    r = make_boot(until=Phase.SETUP_ARCH)
    assert r.ctx.mm.memblock.memory[0] == (0x1000, 0x9F000)
    assert (0, 0x1000, e820.E820_RESERVED) in r.ctx.mm.e820
