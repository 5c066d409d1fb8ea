"""setup_arch's memory bookkeeping before init_mem_mapping: the kernel's e820 (trim_bios_range, mem=,
memmap=, SETUP_E820_EXT setup data), memblock's memory (partial pages trimmed) and its reservations (the
kernel, the ramdisk, BRK, the BIOS regions below 1 MiB, the real-mode trampoline, the low 64 KiB, 6.1's
first megabyte). Expected values are read off the source, named at each test:

* v3.9: arch/x86/kernel/setup.c (setup_arch, trim_bios_range, reserve_brk, trim_low_memory_range),
  arch/x86/kernel/head.c reserve_ebda_region, arch/x86/realmode/init.c reserve_real_mode,
  arch/x86/kernel/e820.c (parse_memopt, parse_memmap_one), mm/memblock.c memblock_trim_memory;
* 6.1: the same files' successors — setup.c early_reserve_memory, arch/x86/kernel/ebda.c
  reserve_bios_regions, realmode/init.c reserve_real_mode (which also reserves all of the first 1 MiB).

The reservations are watched by wrapping ``Memblock.reserve`` (each call as the kernel makes it); the tables
the model builds from them are checked elsewhere, against the real kernel (tests/midboot).
"""

from __future__ import annotations

from typing import Any

import pytest

from earlymm.hw.memory import Region, RegionType
from earlymm.kernel import memblock as memblock_mod
from earlymm.kernel.boot import BootResult
from earlymm.kernel.e820 import (
    E820_ACPI,
    E820_RAM,
    E820_RESERVED,
    E820Entry,
    E820Table,
    memparse,
    parse_mem_options,
)
from earlymm.kernel.phases import Phase
from earlymm.platform.pc import pc_e820

from .conftest import GiB, MiB, make_boot

RAM, RES = RegionType.RAM, RegionType.RESERVED
K = 1 << 10


def boot_watching_reserves(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> tuple[BootResult, list[tuple[int, int]]]:
    """Boot to the end of setup_arch's first part (before init_mem_mapping) and list every
    memblock_reserve(base, size) call in order."""
    calls: list[tuple[int, int]] = []
    real = memblock_mod.Memblock.reserve

    def reserve(self: memblock_mod.Memblock, base: int, size: int) -> None:
        calls.append((base, size))
        real(self, base, size)

    monkeypatch.setattr(memblock_mod.Memblock, "reserve", reserve)
    r = make_boot(until=Phase.SETUP_ARCH, **kw)
    assert r.outcome == "stopped", r.reason
    return r, calls


def _bios_start(calls: list[tuple[int, int]]) -> int:
    """The BIOS-region reservation: the one reserving up to 1 MiB from above 0 (6.1 also reserves [0, 1M))."""
    (start,) = [b for b, s in calls if b + s == MiB and b != 0]
    return start


# ---- v3.9 -------------------------------------------------------------------------------------------------

def test_v39_reservations_on_a_pc(monkeypatch: pytest.MonkeyPatch) -> None:
    """v3.9, a QEMU-like PC (BDA: 639 KiB base memory, EBDA at 0x9fc00): memblock_reserve of the kernel
    [_text, __bss_stop), the ramdisk page-aligned (early_reserve_initrd), the EBDA [0x9fc00, 1M)
    (reserve_ebda_region), BRK from __brk_base over the page-table buffer (reserve_brk), the trampoline at
    the top of free memory below 1 MiB (reserve_real_mode: memblock_find_in_range(0, 1M) — below the EBDA
    and memory's end 0x9f000), and [0, 64K) (trim_low_memory_range, CONFIG_X86_RESERVE_LOW 64)."""
    r, calls = boot_watching_reserves(monkeypatch)
    ctx = r.ctx
    lay, st = ctx.layout, ctx.mm
    rd_at, rd_size = ctx.platform.ramdisk_at, ctx.platform.config.ramdisk_size
    tramp = ctx.profile.realmode_pages * 4 * K
    brk = [s for b, s in calls if b == ctx.pa_symbol("__brk_base")]
    assert len(brk) == 1 and ctx.pa_symbol("__brk_base") + brk[0] >= st.pgt_buf_top << 12
    assert sorted(c for c in calls if c[0] != ctx.pa_symbol("__brk_base")) == sorted([
        (16 * MiB, lay["__bss_stop"] - lay.text), (rd_at, (rd_size + 4 * K - 1) & ~(4 * K - 1)),
        (0x9FC00, MiB - 0x9FC00), (0x9F000 - tramp, tramp), (0, 64 * K)])


def test_v39_memblock_memory_is_the_trimmed_e820_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    """trim_bios_range turns page 0 into reserved (e820_update_range(0, PAGE_SIZE, RAM, RESERVED));
    memblock_x86_fill adds the RAM and memblock_trim_memory(PAGE_SIZE) drops the partial page below
    0x9fc00: memory is [0x1000, 0x9f000), [1M, 3G), [4G, 5G)."""
    r, _ = boot_watching_reserves(monkeypatch)
    assert r.ctx.mm.memblock.memory == [(0x1000, 0x9F000), (MiB, 3 * GiB), (4 * GiB, 5 * GiB)]
    assert r.ctx.mm.e820[0] == (0, 0x1000, E820_RESERVED)


@pytest.mark.parametrize(("base_kib", "ebda_seg", "lowmem"), [
    (639, 0x9FC0, 0x9FC00),  # EBDA right at the top of conventional memory
    (600, 0x9000, 0x90000),  # 'bios puts an EBDA in the top 64K segment … but does not adjust lowmem'
    (639, 0x8000, 0x9FC00),  # an EBDA further down than 64 KiB is not taken
    (640, 0, 0x9F000),  # 'bios does not report an EBDA at all' (old Dells)
    (1100, 0x9FC0, 0x9F000),  # 'Paranoia': lowmem at or above 1 MiB
    (0, 0, 0x9F000),  # … or 0
])
def test_v39_reserve_ebda_region(monkeypatch: pytest.MonkeyPatch, base_kib: int, ebda_seg: int, lowmem: int) -> None:
    _, calls = boot_watching_reserves(monkeypatch, bda_base_kib=base_kib, ebda_segment=ebda_seg)
    assert _bios_start(calls) == lowmem


def test_v39_ebda_above_lowmem_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """head.c @ v3.9: ``unsigned int lowmem, ebda_addr;`` — with the EBDA (0x9fc00) above lowmem (512 KiB),
    ``(lowmem - ebda_addr) <= 0x10000`` compares a wrapped 32-bit difference, so lowmem stays."""
    _, calls = boot_watching_reserves(monkeypatch, bda_base_kib=512, ebda_segment=0x9FC0)
    assert _bios_start(calls) == 0x80000


# ---- 6.1 --------------------------------------------------------------------------------------------------

def test_61_reservations_on_a_pc(monkeypatch: pytest.MonkeyPatch) -> None:
    """6.1, the same PC: early_reserve_memory reserves the kernel, [0, 64K), the ramdisk and the BIOS
    regions — from 0x9f000, since 639 KiB is above BIOS_START_MAX and the EBDA is not below that
    (ebda.c); reserve_real_mode takes 7 pages (the fixtures' kernel: 28672 bytes) at the top of free memory
    below 1 MiB, [0x98000, 0x9f000), then reserves [0, 1M)."""
    r, calls = boot_watching_reserves(monkeypatch, profile="current")
    ctx = r.ctx
    lay = ctx.layout
    rd_at, rd_size = ctx.platform.ramdisk_at, ctx.platform.config.ramdisk_size
    assert sorted(c for c in calls if c[0] != ctx.pa_symbol("__brk_base")) == sorted([
        (16 * MiB, lay["__bss_stop"] - lay.text), (rd_at, (rd_size + 4 * K - 1) & ~(4 * K - 1)),
        (0x9F000, MiB - 0x9F000), (0x98000, 7 * 4 * K), (0, MiB), (0, 64 * K)])


@pytest.mark.parametrize(("base_kib", "ebda_seg", "bios_start"), [
    (639, 0x9FC0, 0x9F000),  # base memory above BIOS_START_MAX: not trusted
    (600, 0x9000, 0x90000),  # a sane EBDA below the BIOS region is used instead
    (600, 0x1000, 0x96000),  # an EBDA below BIOS_START_MIN (128K) is not
    (100, 0, 0x9F000),  # base memory below BIOS_START_MIN: bumped to 640K's limit
    (512, 0x9FC0, 0x80000),  # an EBDA above the base memory's end changes nothing
])
def test_61_reserve_bios_regions(monkeypatch: pytest.MonkeyPatch, base_kib: int, ebda_seg: int,
                                 bios_start: int) -> None:
    _, calls = boot_watching_reserves(monkeypatch, profile="current", bda_base_kib=base_kib, ebda_segment=ebda_seg)
    assert _bios_start(calls) == bios_start


# ---- the kernel's e820: trim_bios_range, memblock_trim_memory ---------------------------------------------

@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_bios_area_reported_as_ram_is_removed(monkeypatch: pytest.MonkeyPatch, profile: str) -> None:
    """trim_bios_range: 'Some BIOSes report the PC BIOS area (640Kb -> 1Mb) as RAM even though it is not.
    take them out.' A firmware reporting all of [0, 512M) as RAM leaves the kernel RAM [0x1000, 0xa0000)
    and [1M, 512M)."""
    r, _ = boot_watching_reserves(monkeypatch, profile=profile, e820=[Region(0, 512 * MiB, RAM)])
    assert [(a, a + s) for a, s, t in r.ctx.mm.e820 if t == E820_RAM] == [(0x1000, 0xA0000), (MiB, 512 * MiB)]
    assert r.ctx.mm.memblock.memory == [(0x1000, 0xA0000), (MiB, 512 * MiB)]


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_partial_pages_of_ram_are_not_mapped(profile: str) -> None:
    """memblock_trim_memory(PAGE_SIZE) rounds RAM [0x20000400, 1G) in to [0x20001000, 1G): the page at
    0x20000000 is not RAM to memblock, so init_mem_mapping never maps it (its 2 MiB block is not all RAM,
    so the range's head is mapped with 4 KiB pages from 0x20001000)."""
    e820 = [*pc_e820(512 * MiB), Region(0x2000_0400, GiB, RAM)]
    r = make_boot(profile=profile, e820=e820, until=Phase.INIT_MEM_MAPPING)
    assert r.outcome == "stopped", r.reason
    probe, va = r.ctx.cpu.mmu.probe, r.ctx.va
    assert not probe(va(0x2000_0000)).ok
    res = probe(va(0x2000_1000))
    assert res.ok and res.page_size == 4096


def test_sanitising_merges_neighbours_and_the_larger_type_wins() -> None:
    """sanitize_e820_map (v3.9) / e820__update_table (6.1): at each change point the overlapping entry with
    the largest type number wins; consecutive stretches of one type become one entry; sorted."""
    t = E820Table([E820Entry(MiB, MiB, E820_RAM), E820Entry(0, MiB, E820_RAM), E820Entry(3 * MiB, MiB, E820_RESERVED),
                   E820Entry(2 * MiB, MiB, E820_RESERVED), E820Entry(0, 6 * MiB, E820_RAM),
                   E820Entry(5 * MiB, 2 * MiB, E820_ACPI)])
    t.update_table()
    assert t.as_tuples() == [(0, 2 * MiB, E820_RAM), (2 * MiB, 2 * MiB, E820_RESERVED), (4 * MiB, MiB, E820_RAM),
                             (5 * MiB, 2 * MiB, E820_ACPI)]


# ---- mem= and memmap= (e820.c parse_memopt, parse_memmap_one; memparse) ------------------------------------

ROM = (0xFFFC_0000, 4 * GiB, E820_RESERVED)  # the BIOS ROM below 4 GiB: not RAM, so mem= leaves it


def _table() -> E820Table:
    t = E820Table([E820Entry(0, 0x9FC00, E820_RAM), E820Entry(MiB, GiB - MiB, E820_RAM),
                   E820Entry(ROM[0], ROM[1] - ROM[0], ROM[2]), E820Entry(4 * GiB, GiB, E820_RAM)])
    t.update_table()
    return t


def test_memparse_reads_the_kernels_suffixes_and_bases() -> None:
    """lib/cmdline.c memparse: simple_strtoull(ptr, &endptr, 0) then K/M/G/T/P/E (either case) shift by
    10/20/30/40/50/60."""
    assert memparse("64K") == (64 << 10, "") and memparse("3g") == (3 << 30, "")
    assert memparse("1500M") == (1500 << 20, "") and memparse("2T@x") == (2 << 40, "@x")
    assert memparse("0x1000") == (0x1000, "") and memparse("010") == (8, "")


def test_mem_limits_ram() -> None:
    """parse_memopt: e820_remove_range(mem_size, ULLONG_MAX - mem_size, E820_RAM, 1) — RAM only."""
    t = _table()
    parse_mem_options(t, "quiet mem=512M")
    assert [(e.addr, e.end, e.type) for e in t.entries] == [(0, 0x9FC00, E820_RAM), (MiB, 512 * MiB, E820_RAM), ROM]


def test_mem_zero_is_ignored() -> None:
    """parse_memopt (e820.c @ v3.9 and 6.1): ``if (mem_size == 0) return -EINVAL;`` — "don't remove all of
    memory when handling mem={invalid}"; do_early_param then warns about a malformed early option."""
    t = _table()
    before = t.as_tuples()
    assert parse_mem_options(t, "mem=0") == ["malformed mem= option '0' ignored"]
    assert t.as_tuples() == before


@pytest.mark.parametrize(("option", "want"), [
    # memmap=nn@ss: e820_add_region(ss, nn, E820_RAM)
    ("memmap=16M@0x80000000", [(0, 0x9FC00, E820_RAM), (MiB, GiB, E820_RAM), (2 * GiB, 2 * GiB + 16 * MiB, E820_RAM),
                               ROM, (4 * GiB, 5 * GiB, E820_RAM)]),
    # memmap=nn#ss: E820_ACPI, which outranks RAM where they overlap (sanitize: the larger type wins)
    ("memmap=1M#0x20000000", [(0, 0x9FC00, E820_RAM), (MiB, 512 * MiB, E820_RAM), (512 * MiB, 513 * MiB, E820_ACPI),
                              (513 * MiB, GiB, E820_RAM), ROM, (4 * GiB, 5 * GiB, E820_RAM)]),
    # memmap=nn$ss: E820_RESERVED
    ("memmap=2M$0x400000", [(0, 0x9FC00, E820_RAM), (MiB, 4 * MiB, E820_RAM), (4 * MiB, 6 * MiB, E820_RESERVED),
                            (6 * MiB, GiB, E820_RAM), ROM, (4 * GiB, 5 * GiB, E820_RAM)]),
    # memmap=nn alone: as mem=nn
    ("memmap=256M", [(0, 0x9FC00, E820_RAM), (MiB, 256 * MiB, E820_RAM), ROM]),
])
def test_memmap_forms(option: str, want: list[tuple[int, int, int]]) -> None:
    t = _table()
    parse_mem_options(t, option)
    assert [(e.addr, e.end, e.type) for e in t.entries] == want


# ---- SETUP_E820_EXT: more than 128 e820 entries ------------------------------------------------------------

def many_entries() -> list[Region]:
    """A PC plus 70 × (2 MiB RAM, 2 MiB reserved) above 4 GiB: 145 entries, 17 beyond boot_params' 128."""
    out = list(pc_e820(3 * GiB))
    for i in range(70):
        at = 4 * GiB + i * 4 * MiB
        out += [Region(at, at + 2 * MiB, RAM), Region(at + 2 * MiB, at + 4 * MiB, RES)]
    return out


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_e820_entries_beyond_128_come_from_setup_data(profile: str) -> None:
    """parse_setup_data → parse_e820_ext (v3.9) / e820__memory_setup_extended (6.1): the SETUP_E820_EXT node's
    entries are appended through early_memremap, which early_memunmap undoes (bm_pte empty again). Every RAM
    range, the last ones too, is in the final direct map."""
    e820 = many_entries()
    r = make_boot(profile=profile, e820=e820, until=Phase.INIT_MEM_MAPPING)
    assert r.outcome == "stopped", r.reason
    ctx = r.ctx
    for reg in e820:
        if reg.kind is RAM and reg.start >= 4 * GiB:
            assert ctx.cpu.mmu.probe(ctx.va(reg.start)).ok, hex(reg.start)
            assert ctx.cpu.mmu.probe(ctx.va(reg.end - 1)).ok, hex(reg.end)
    assert ctx.platform.mem.read(ctx.pa_symbol("bm_pte"), 4096) == bytes(4096)


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_the_extended_map_is_printed_after_the_bios_map(profile: str) -> None:
    """6.1 e820__memory_setup prints boot_params' (at most 128) entries as BIOS-e820, then parse_setup_data →
    e820__memory_setup_extended appends the SETUP_E820_EXT entries and prints 'extended physical RAM map:'
    and the whole table as 'extended:' (e820.c @ 6.1); v3.9's setup_memory_map / parse_e820_ext likewise."""
    r = make_boot(profile=profile, e820=many_entries(), until=Phase.SETUP_ARCH)
    console = r.ctx.console
    bios = [line for line in console if line.startswith("BIOS-e820:")]
    ext = [line for line in console if line.startswith("extended:")]
    assert console.index("BIOS-provided physical RAM map:") < console.index("extended physical RAM map:")
    assert 0 < len(bios) <= 128
    # every map entry is in the extended print: RAM above 4 GiB alternating with reserved ranges
    assert sum("usable" in line for line in ext) == sum(reg.kind is RAM for reg in many_entries())
    last = many_entries()[-1]  # the last node entry: only in the extended print
    assert f"extended: [mem {last.start:#018x}-{last.end - 1:#018x}] reserved" in ext
    assert not any(f"{last.start:#018x}" in line for line in bios)


# ---- boot_params: the command line above 4 GiB -------------------------------------------------------------

@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_command_line_above_4g_is_found_through_ext_cmd_line_ptr(profile: str) -> None:
    """copy_bootdata: cmd_line_ptr | ext_cmd_line_ptr << 32 (get_cmd_line_ptr), read through __va."""
    line = "console=ttyS0 mem=6G"
    r = make_boot(profile=profile, mem=8 * GiB, cmdline=line, cmdline_at=5 * GiB + 0x1000,
                  until=Phase.X86_64_START_KERNEL)
    ctx = r.ctx
    got = ctx.cpu.read(ctx.sym("boot_command_line"), 2048).split(b"\0", 1)[0].decode()
    assert got == line


def test_ramdisk_is_reserved_page_aligned(monkeypatch: pytest.MonkeyPatch) -> None:
    """early_reserve_initrd: memblock_reserve(ramdisk_image, PAGE_ALIGN(ramdisk_end) - ramdisk_image)."""
    _, calls = boot_watching_reserves(monkeypatch, ramdisk_at=0x3000_0000, ramdisk_size=0x12345)
    assert (0x3000_0000, 0x13000) in calls
