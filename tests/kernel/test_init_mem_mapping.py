"""init_mem_mapping: the final direct map follows e820 (holes skipped, ISA range always mapped) with the
page sizes split_mem_range chooses, and CR3 switches to init_level4_pgt (spec §3.8, §3.11 item 5)."""

from __future__ import annotations

from earlymm.hw.memory import Region, RegionType
from earlymm.kernel.init import split_mem_range
from earlymm.kernel.init_64 import PG_LEVEL_1G, PG_LEVEL_2M
from earlymm.kernel.memblock import Memblock
from earlymm.kernel.mm_state import MmState

from .conftest import GiB, MiB, make_boot

PO = 0xFFFF_8800_0000_0000
RAM, RES = RegionType.RAM, RegionType.RESERVED


def holey_e820() -> list[Region]:
    return [Region(0, 0x9FC00, RAM), Region(0x9FC00, 0xA0000, RES), Region(0xF0000, 0x100000, RES),
            Region(0x100000, GiB, RAM), Region(GiB + 64 * MiB, 2 * GiB + 3 * MiB, RAM),
            Region(0xFFFC0000, 1 << 32, RES)]


def test_direct_map_respects_e820_holes_and_maps_the_isa_range() -> None:
    r = make_boot(e820=holey_e820())
    assert r.outcome == "booted", r.reason
    assert all(c.ok for c in r.observer.final()), [c for c in r.observer.final() if not c.ok]
    mmu = r.ctx.cpu.mmu
    for pa in (0x0, 0xA0000, 0xF0000, 0xFFFFF):  # ISA range: mapped even where e820 has no RAM
        res = mmu.probe(PO + pa)
        assert res.ok and res.pa == pa and res.page_size == 4096
    for pa in (GiB, GiB + 32 * MiB, GiB + 64 * MiB - 1, 2 * GiB + 4 * MiB):  # the holes
        assert not mmu.probe(PO + pa).ok, hex(pa)
    for pa in (0x100000, GiB - 1, GiB + 64 * MiB, 2 * GiB + 3 * MiB - 1):
        res = mmu.probe(PO + pa)
        assert res.ok and res.pa == pa
    # the tail 2 GiB .. 2 GiB + 3 MiB: a 2 MiB page, then 4 KiB pages for the last MiB
    assert mmu.probe(PO + 2 * GiB).page_size == 2 * MiB
    assert mmu.probe(PO + 2 * GiB + 2 * MiB).page_size == 4096
    assert r.ctx.cpu.regs.cr3 == r.ctx.pa_symbol("init_top_pgt")


def test_final_map_uses_1g_pages_where_whole_gigabytes_are_ram() -> None:
    r = make_boot(mem=8 * GiB)
    mmu = r.ctx.cpu.mmu
    assert mmu.probe(PO + 5 * GiB).page_size == GiB
    assert mmu.probe(PO + 0x200000).page_size == 2 * MiB  # 2 MiB .. 1 GiB: 2 MiB pages
    assert mmu.probe(PO + 0x100000).page_size == 4096  # 1-2 MiB shares a 2 MiB block with the hole
    res = mmu.probe(PO + 5 * GiB)
    assert res.xd and res.writable and not res.user_page and res.path[-1] & 0x100  # PAGE_KERNEL_LARGE, global


def test_without_gbpages_the_map_uses_2m_pages() -> None:
    r = make_boot(mem=8 * GiB, gbpages=False)
    assert r.outcome == "booted"
    assert r.ctx.cpu.mmu.probe(PO + 5 * GiB).page_size == 2 * MiB
    assert r.ctx.mm.pages_1g == 0


def test_split_mem_range_matches_the_kernels_five_ranges() -> None:
    mb = Memblock()
    mb.add(0, 8 * GiB)
    st = MmState(mb, page_size_mask=PG_LEVEL_2M | PG_LEVEL_1G)
    got = [(r.start, r.end, r.page_size) for r in split_mem_range(st, 0x123000, 5 * GiB + 0x3456000)]
    # every block is RAM, so adjust_range_page_size_mask upgrades the 4K head/tail and 2M pieces:
    # 6.1 adjusts first, so the whole range merges into one 1G-mask range …
    assert got == [(0x123000, 5 * GiB + 0x3456000, "1G")]
    # … while v3.9 merges first (nothing merges: the five masks differ) and adjusts the five ranges after
    # (init.c @ v3.9; moved in 3.11 by commit 7de3d66b): five ranges, each upgraded to 1G
    got = [(r.start, r.end, r.page_size) for r in split_mem_range(st, 0x123000, 5 * GiB + 0x3456000, True)]
    assert got == [(0x123000, 0x200000, "1G"), (0x200000, GiB, "1G"), (GiB, 5 * GiB, "1G"),
                   (5 * GiB, 5 * GiB + 0x3400000, "1G"), (5 * GiB + 0x3400000, 5 * GiB + 0x3456000, "1G")]
    mb2 = Memblock()
    mb2.add(0x100000, 5 * GiB + 0x3456000)
    st2 = MmState(mb2, page_size_mask=PG_LEVEL_2M | PG_LEVEL_1G)
    got2 = [(r.start, r.end, r.page_size) for r in split_mem_range(st2, 0x123000, 5 * GiB + 0x3456000)]
    assert got2 == [(0x123000, 0x200000, "4K"), (0x200000, GiB, "2M"), (GiB, 5 * GiB, "1G"),
                    (5 * GiB, 5 * GiB + 0x3400000, "2M"), (5 * GiB + 0x3400000, 5 * GiB + 0x3456000, "4K")]


def test_after_init_mem_mapping_the_early_handler_is_inert() -> None:
    """CR3 is no longer early_level4_pgt: a direct-map miss now reaches page_fault, an oops."""
    r = make_boot()
    ctx = r.ctx
    from earlymm.hw.faults import Halt

    try:
        ctx.rd(PO + (1 << 44))  # far beyond RAM: not in the final map
    except Halt as e:
        assert e.outcome == "oops" and "unable to handle kernel paging request" in e.reason
    else:
        raise AssertionError("expected an oops")


def test_invariant_flags_a_large_page_over_a_hole() -> None:
    """Spec §3.8 split_mem_range: a 2 MiB leaf only where the whole block is RAM. Planting one over the
    e820 hole must make the §3.11 check fail (the check reads the tables in numpy, streamed)."""
    from earlymm.kernel import invariants as inv
    from tests.kernel.conftest import make_boot

    hole = [Region(0, 0x9FC00, RegionType.RAM), Region(0x10_0000, 0x1000_0000, RegionType.RAM),
            Region(0x1000_0000, 0x1020_0000, RegionType.RESERVED), Region(0x1020_0000, 0x4000_0000, RegionType.RAM)]
    r = make_boot(e820=hole, gbpages=False)
    assert r.outcome == "booted" and inv._large_over_holes(r.ctx) == []
    ctx = r.ctx
    res = ctx.cpu.mmu.probe(ctx.va(0x1020_0000))  # the 2 MiB leaf right after the hole
    assert res.ok and res.page_size == 1 << 21
    leaf_at = res.entry_addr(ctx.cpu.mmu.plan, len(res.path) // 2 - 1)
    ctx.platform.mem.write_u64(leaf_at - 8, 0x1000_0000 | 0x80 | 0x63)  # plant a 2 MiB leaf over the hole
    assert inv._large_over_holes(ctx) == ["2 MiB page at pa 0x10000000"]


def test_invariant_flags_a_whole_table_of_1g_leaves_over_holes() -> None:
    """The same check on a pud table the builders filled with 512 consecutive 1 GiB leaves (read as one range,
    not leaf by leaf): it passes for the real table, and a consecutive table moved down over the PC's holes
    (the ISA hole below 1 MiB, the PCI hole at 3-4 GiB) fails at the first leaf that is not all RAM."""
    from earlymm.kernel import invariants as inv
    from tests.kernel.conftest import make_boot

    r = make_boot(mem=1 << 40)
    assert r.outcome == "booted" and inv._large_over_holes(r.ctx) == []
    ctx = r.ctx
    res = ctx.cpu.mmu.probe(ctx.va(512 << 30))  # the first 1 GiB leaf of the second pud table
    assert res.ok and res.page_size == 1 << 30
    table = res.entry_addr(ctx.cpu.mmu.plan, len(res.path) // 2 - 1)
    assert table & 0xFFF == 0
    leaf = ctx.platform.mem.read_u64(table)
    assert leaf & 0x81 == 0x81 and leaf & 0xF_FFFF_FFFF_F000 == 512 << 30
    ctx.platform.mem.write(table, b"".join(((leaf - (512 << 30)) + (k << 30)).to_bytes(8, "little")
                                           for k in range(512)))
    # PC layout (pc_e820): RAM [0, 0x9fc00), [1 MiB, 3 GiB), [4 GiB, …): 0 and 3 GiB are not all RAM
    assert inv._large_over_holes(ctx) == ["1024 MiB page at pa 0x0", "1024 MiB page at pa 0xc0000000"]
