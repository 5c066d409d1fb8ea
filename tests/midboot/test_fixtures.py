"""The committed mid-boot fixtures against themselves and against QEMU: each stop is where kallsyms says,
its tables are complete, the kernel's counters agree with its tables, the enumerator reproduces QEMU's
``info tlb`` byte for byte, and the final direct map covers the RAM the kernel printed."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from earlymm.tools.midboot.bootinfo import decode_boot_params
from earlymm.tools.midboot.fixture import STOP_ORDER, load_fixture
from tests.midboot.support import (
    MIDBOOT,
    START_KERNEL_MAP,
    check_direct_map,
    check_stop_basics,
    check_tlb,
    check_zero_page_e820,
    entry,
    five_level,
    page_offset,
    pool_pages_linked,
    space,
    va_bits,
)

IDS = [p.name for p in MIDBOOT]


def test_the_spread_of_machines_is_there() -> None:
    metas = [load_fixture(p).meta for p in MIDBOOT]
    mems = {m["mem"] for m in metas}
    assert {"512M", "2G", "4G", "12G"} <= mems
    assert {m["cpu"] for m in metas} >= {"qemu64", "max,la57=off", "qemu64,+la57", "max"}
    # 5-level paging with RAM above 4 GiB and 1 GiB pages, and an LA57 CPU told no5lvl
    assert any(m["cpu_features"]["la57"] and m["cpu_features"]["pdpe1gb"] and m["mem"] == "12G" for m in metas)
    assert any(m["cpu_features"]["la57"] and "no5lvl" in m["append"] for m in metas)
    assert any("memmap=" in m["append"] for m in metas) and any(" mem=" in m["append"] for m in metas)


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_fixture_says_how_it_was_made(path: Path) -> None:
    fx = load_fixture(path)
    m = fx.meta
    assert [s.name for s in fx.stops] == list(STOP_ORDER)
    assert m["qemu_command"][0] == "qemu-system-x86_64" and "-S" in m["qemu_command"]
    assert m["cpu"] in m["qemu_command"] and m["mem"] in m["qemu_command"] and m["append"] in m["qemu_command"]
    assert "nokaslr" in m["append"] and "earlyprintk=serial" in m["append"]
    assert f"linux-image-{m['kernel_release']}-unsigned" in m["packages"]
    assert m["kernel_release"] in m["kernel_banner"] and m["made_by"].startswith("python -m earlymm")
    # QEMU's CPU properties against the kernel's own words (probe_page_size_mask prints this line)
    assert m["cpu_features"]["pdpe1gb"] == ("Using GB pages for direct mapping" in fx.console)
    assert m["cpu_features"]["pdpe1gb"] == m["cpu"].startswith("max")
    # the paging mode QEMU's CR4 shows against the kernel's own words: setup_arch prints max_arch_pfn =
    # 1 << (MAX_PHYSMEM_BITS - PAGE_SHIFT), 2^40 with 5-level paging, 2^34 with 4-level
    arch_pfn = "0x10000000000" if five_level(fx) else "0x400000000"
    assert f"max_arch_pfn = {arch_pfn}\n" in fx.console
    assert five_level(fx) == (m["cpu_features"]["la57"] and "no5lvl" not in m["append"].split())


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_stops_parse_and_tables_are_complete(path: Path) -> None:
    fx = load_fixture(path)
    for stop in fx.stops:
        assert check_stop_basics(fx, stop) == []


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_next_early_pgt_counts_the_pool_pages_early_top_pgt_links(path: Path) -> None:
    """head64.c's counter and head64.c's tables agree: every pool page taken since the last reset is
    still linked from early_top_pgt (they are only unlinked by a reset, which zeroes the counter)."""
    fx = load_fixture(path)
    for stop in fx.stops:
        assert pool_pages_linked(fx, stop) == stop.next_early_pgt, stop.name


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_enumerator_reproduces_qemus_info_tlb(path: Path) -> None:
    fx = load_fixture(path)
    for stop in fx.stops:
        assert check_tlb(fx, stop) == []


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_final_direct_map_covers_the_printed_ram(path: Path) -> None:
    fx = load_fixture(path)
    stop = fx.stop("idt_setup_early_pf")
    assert check_direct_map(fx, stop) == []
    # spec §3.11 (5): init_top_pgt inherits early_top_pgt's kernel-image entry
    assert entry(stop, stop.roots["init_top_pgt"], 511) == entry(stop, stop.roots["early_top_pgt"], 511)


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_switchover_map_at_x86_64_start_kernel(path: Path) -> None:
    """spec §3.3/§3.11 (1): the identity map covers the image, VA == PA, non-global; the kernel map puts
    __START_KERNEL_map + x at phys_base + x; nothing else is mapped low or in the direct map yet."""
    fx = load_fixture(path)
    stop = fx.stop("x86_64_start_kernel")
    load, size = int(fx.machine["load_address"], 16), int(fx.machine["image_size"], 16)
    phys_base = int(stop.info["phys_base"], 16)
    assert load == fx.symbol("_text") - START_KERNEL_MAP + phys_base
    leaves = space(fx, stop).leaves
    ident = [lf for lf in leaves if lf.va < 1 << va_bits(fx) and lf.va == lf.pa and not lf.flags & 0x100]
    for pa in range(load, load + size, 2 << 20):
        assert any(lf.va <= pa < lf.va + lf.size for lf in ident), hex(pa)
    kmap = [lf for lf in leaves if lf.va >= START_KERNEL_MAP and lf.va < START_KERNEL_MAP + (1 << 30)]
    assert kmap and all(lf.pa == lf.va - START_KERNEL_MAP + phys_base for lf in kmap)
    assert not [lf for lf in leaves if page_offset(fx) <= lf.va < START_KERNEL_MAP]


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_boot_params_fields(path: Path) -> None:
    """The zero page read back raw decodes to what the fixture says; the firmware's e820 in it is the one the
    kernel printed; the ramdisk the model is given is the one boot_params names."""
    import gzip

    fx = load_fixture(path)
    for stop in fx.stops:
        raw = gzip.decompress((path / f"{stop.name}.boot_params.bin.gz").read_bytes())
        assert decode_boot_params(raw) == stop.boot_params
    assert check_zero_page_e820(fx) == []
    last = fx.stop("idt_setup_early_pf").boot_params
    assert fx.machine["ramdisk"] == last["ramdisk"] and int(last["ramdisk"][1], 16) > 0
    assert fx.machine["cmd_line_ptr"] == last["cmd_line"]


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_link_targets_are_where_the_kernel_says_it_put_them(path: Path) -> None:
    """Every table page is a static table (kallsyms), a pool page below next_early_pgt, a BRK page inside the
    BRK reservation the kernel printed (memblock=debug: reserve_brk's memblock_reserve from setup_arch), or a
    page alloc_low_pages got from memblock (the memblock_reserve printed right after its allocation)."""
    fx = load_fixture(path)
    lines = fx.console.splitlines()
    brk = re.search(r"memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\] setup_arch", fx.console)
    assert brk is not None
    allocs = [re.search(r"\[(0x[0-9a-f]+)-(0x[0-9a-f]+)\]", nxt) for ln, nxt in itertools.pairwise(lines)
              if "memblock_phys_alloc_range" in ln and "alloc_low_pages" in ln]
    ram = [(int(m[1], 16), int(m[2], 16) + 1) for m in allocs if m]
    for stop in fx.stops:
        roles = fx.roles(stop)
        for root in ("cr3", "early_top_pgt"):
            for lk in space(fx, stop, root).links:
                role = roles.role(lk.table)
                if role.startswith("early_dynamic_pgts["):
                    assert int(role[19:-1]) < stop.next_early_pgt, (stop.name, role)
                elif role.startswith("brk["):
                    assert int(brk[1], 16) <= lk.table <= int(brk[2], 16), (stop.name, role)
                elif role.startswith("RAM"):
                    assert any(a <= lk.table < b for a, b in ram), (stop.name, role)
    last = fx.stop("idt_setup_early_pf")
    fixmap = {lk.va: fx.roles(last).role(lk.table) for lk in space(fx, last).links if lk.level == "PDE"}
    # early_ioremap_init links bm_pte for FIX_BTMAP; head_64.S: level2_fixmap_pgt[506 + n] → level1_fixmap_pgt page n
    assert fixmap[0xFFFF_FFFF_FF20_0000] == "bm_pte"
    assert fixmap[0xFFFF_FFFF_FF40_0000] == "level1_fixmap_pgt[0]"
    assert fixmap[0xFFFF_FFFF_FF60_0000] == "level1_fixmap_pgt[1]"
