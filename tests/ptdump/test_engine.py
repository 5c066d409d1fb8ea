"""The enumeration engine: agreement with the scalar walk, every paging mode, and hostile tables."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from earlymm.arch.modes import Features, Level, PagingMode
from earlymm.hw.walk import OK, walk
from earlymm.images import open_image
from earlymm.tools.machine_view import RegOverrides, infer_registers
from earlymm.tools.ptdump import linux, qemu, regions
from earlymm.tools.ptdump.engine import COLLAPSED, expand
from earlymm.tools.ptdump.runs import effective, space_json
from earlymm.tools.ptdump.space import open_space
from tests.ptdump.support import FIXTURE_IDS, FIXTURES, Built, build, core_of

P, RW, US, PS, G = 1, 2, 4, 0x80, 0x100
NX = 1 << 63
REGS_MODES = (PagingMode.LEGACY32, PagingMode.PAE, PagingMode.LONG4, PagingMode.LONG5)


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_leaves_agree_with_the_scalar_walk(fixture: Path) -> None:
    """Every listed leaf translates (hw.walk) to the listed page with the listed effective rights, and
    addresses between leaves fault."""
    with open_image(core_of(fixture)) as img:
        space = open_space(img, infer_registers(img.cpus[0], RegOverrides()), Features())
        tree = space.tree("arch")
        leaves = expand(tree)
        assert leaves and tree.notes == []
        sem, plan, root = tree.sem, space.plan, space.root("arch")
        rng = random.Random(fixture.name)
        picked = [lf for lf in leaves if sem.rows[lf[2]].lsize > 4096] + rng.sample(leaves, 2000)
        for va, e, depth, acc, xd in picked:
            row = sem.rows[depth]
            off = rng.randrange(row.lsize) & ~7
            r = walk(space.mem, plan, root, va + off, user=bool(acc & 4))  # user pages: no SMAP refusal
            assert r.outcome == OK, hex(va)
            assert r.pa == sem.leaf_pa(row, e) + off and r.page_size == row.lsize
            assert (r.user_page, r.writable, r.xd) == effective(sem, acc, xd)
        starts = {va for va, *_ in leaves}
        ends = sorted({va + sem.rows[d].lsize for va, _e, d, _a, _x in leaves} - starts)
        for va in ends[:: max(1, len(ends) // 300)]:
            if va < 1 << 64:  # just past a run: not mapped (or not canonical)
                assert walk(space.mem, plan, root, va).outcome != OK, hex(va)


def _expect_same(b: Built, mapped: dict[int, tuple[int, int]], **regs: int) -> list[tuple[int, int, int]]:
    """Enumerate ``b`` (arch reading) and check it against the mappings made, and the walk."""
    space = b.space(**regs)
    tree = space.tree("arch")
    leaves = expand(tree)
    got = {va: (tree.sem.leaf_pa(tree.sem.rows[d], e), tree.sem.rows[d].lsize) for va, e, d, _a, _x in leaves}
    assert got == mapped
    for va, (pa, _size) in mapped.items():
        r = walk(space.mem, space.plan, space.root("arch"), va + 0x18,
                 pdptes=tuple(space.mem.read_u64((space.root("arch") & ~0x1F) + 8 * i) for i in range(4)))
        assert r.outcome == OK and r.pa == pa + 0x18
    return [(va, e, d) for va, e, d, _a, _x in leaves]


def test_32_bit_paging_with_4m_and_pse36_pages(capsys: pytest.CaptureFixture[str]) -> None:
    b = build(PagingMode.LEGACY32)
    m = b.mapper
    m.map(0x40_0000, 0x9000, 0x3000, RW | US)
    m.map_page(0xC000_0000, 0x1_2340_0000, 1 << 22, RW | G)  # PSE-36: physical bits 39:32 in 20:13
    m.map_page(0xFFC0_0000, 0x80_0000, 1 << 22, 0)
    mapped = {0x40_0000: (0x9000, 4096), 0x40_1000: (0xA000, 4096), 0x40_2000: (0xB000, 4096),
              0xC000_0000: (0x1_2340_0000, 1 << 22), 0xFFC0_0000: (0x80_0000, 1 << 22)}
    _expect_same(b, mapped)
    tree = b.space().tree("qemu")
    lines = qemu.tlb_text(tree).splitlines()
    # tlb_info_32: 4 MiB leaves masked with ~((1 << 21) - 1) (PSE-36 bits are not shown), PTEs with ~0xfff.
    assert lines == ["0000000000400000: 0000000000009000 -------UW",
                     "0000000000401000: 000000000000a000 -------UW", "0000000000402000: 000000000000b000 -------UW",
                     "00000000c0000000: 0000000023400000 -GP-----W", "00000000ffc00000: 0000000000800000 --P------"]
    assert qemu.mem_text(b.space().tree("qemu")).splitlines() == [
        "0000000000400000-0000000000403000 0000000000003000 urw",
        "00000000c0000000-00000000c0400000 0000000000400000 -rw",
        "00000000ffc00000-0000000100000000 0000000000400000 -r-"]


def test_pae_paging_keeps_bit_63_in_qemus_output() -> None:
    b = build(PagingMode.PAE)
    m = b.mapper
    m.map(0x1000, 0x5000, 0x1000, RW | US | NX)  # NX via bit 63 (EFER.NXE set)
    m.map_page(0x8000_0000, 0x20_0000, 1 << 21, RW)
    m.map_page(0xC020_0000, 0x40_0000, 1 << 21, NX)
    mapped = {0x1000: (0x5000, 4096), 0x8000_0000: (0x20_0000, 1 << 21), 0xC020_0000: (0x40_0000, 1 << 21)}
    _expect_same(b, mapped)
    lines = qemu.tlb_text(b.space().tree("qemu")).splitlines()
    # tlb_info_pae32 masks with ~((hwaddr)(1 << 20) - 1) and ~0xfff: the NX bit survives in the address.
    assert lines == ["0000000000001000: 8000000000005000 X------UW", "0000000080000000: 0000000000200000 --P-----W",
                     "00000000c0200000: 8000000000400000 X-P------"]
    space = b.space()
    leaves = expand(space.tree("arch"))
    assert [effective(space.semantics("arch"), a, x) for _v, _e, _d, a, x in leaves] == [
        (True, True, True), (False, True, False), (False, False, True)]


@pytest.mark.parametrize("mode", [PagingMode.LONG4, PagingMode.LONG5])
def test_effective_rights_combine_over_levels(mode: PagingMode) -> None:
    b = build(mode)
    m = b.mapper
    m.map(0x1000, 0x7000, 0x1000, RW | US)
    top = Level.PML5 if mode is PagingMode.LONG5 else Level.PML4
    e = m.get_entry(0x1000, top)
    assert e is not None
    m.set_entry(0x1000, top, (e & ~RW) | NX)  # read-only, no-execute from above: info tlb cannot tell
    space = b.space()
    [(_va, entry, _d, acc, xd)] = expand(space.tree("arch"))
    assert entry & RW and not entry & NX
    assert effective(space.semantics("arch"), acc, xd) == (True, False, True)
    doc = space_json(space.tree("arch"), expand(space.tree("arch")), space.cr3)
    assert doc["runs"][0]["write"] is False and doc["runs"][0]["nx"] is True


def _hostile(kind: str) -> Built:
    b = build(PagingMode.LONG4)
    root = b.mapper.root
    if kind == "self-map":  # every entry of the top table points at the top table
        for i in range(512):
            b.mem.write_u64(root + 8 * i, root | P | RW | US)
    elif kind == "chain-same":  # every entry of every level points at the one next table
        tables = [root] + [b.table() for _ in range(3)]
        for t, nxt in itertools.pairwise(tables):
            for i in range(512):
                b.mem.write_u64(t + 8 * i, nxt | P | RW)
        for i in range(0, 512, 2):  # alternate present / absent leaves: worst case for run merging
            b.mem.write_u64(tables[3] + 8 * i, 0x5000 | P | (RW if i % 4 else 0))
    elif kind == "two-cycle":  # A -> B -> A -> B: each table points at the other
        other = b.table()
        for i in range(512):
            b.mem.write_u64(root + 8 * i, other | P | RW)
            b.mem.write_u64(other + 8 * i, root | P | RW | (PS if i == 7 else 0))
    return b


@pytest.mark.parametrize("kind", ["self-map", "chain-same", "two-cycle"])
def test_hostile_tables_finish_fast_and_say_what_they_collapsed(kind: str) -> None:
    b = _hostile(kind)
    space = b.space()  # bounded by work, not by the clock: tables read, lines and runs produced
    tree = space.tree("qemu")
    assert tree.tables <= 4 and tree.leaves > 10**8  # counted exactly, never expanded
    text = qemu.tlb_text(tree)
    assert 0 < text.count("\n") <= 4096
    assert any(n.kind == COLLAPSED and n.leaves for n in tree.notes)
    listed = text.count("\n") + sum(n.leaves for n in tree.notes)
    assert listed == tree.leaves  # every leaf is either printed or counted in a note
    mem = qemu.mem_text(space.tree("qemu"))
    assert mem.count("\n") <= 4096
    arch = space.tree("arch")
    doc = space_json(arch, expand(arch), space.cr3)
    assert len(doc["runs"]) <= 4096 and doc["notes"]
    ltree = space.tree("linux", keep_nonpresent=True)
    layout = regions.detect(expand(ltree), [r.span for r in ltree.sem.rows], False)
    out, _wx = linux.dump(ltree, layout.markers(), check_wx=True)
    assert out.count("\n") <= linux.DEFAULT_MAX_RUNS + 1000


def test_the_table_limit_bounds_the_walk_and_is_reported() -> None:
    b = build(PagingMode.LONG4)
    for i in range(64):
        b.mapper.map(i << 30, 0x1000 * i, 0x1000, RW)  # 64 distinct PD+PT pairs
    tree = b.space().tree("arch", max_tables=20)
    leaves = expand(tree)
    assert tree.capped and tree.tables == 20
    assert 0 < len(leaves) < 64
    assert any(n.kind == "not-walked" for n in tree.notes)


def test_espfix_aliases_are_listed_in_full_from_one_shared_subtree() -> None:
    fixture = FIXTURES[0]
    with open_image(core_of(fixture)) as img:
        space = open_space(img, infer_registers(img.cpus[0], RegOverrides()), Features())
        tree = space.tree("qemu")
        espfix = [lf for lf in expand(tree) if 0xFFFF_FF00_0000_0000 <= lf[0] < 0xFFFF_FF80_0000_0000]
    assert len(espfix) == 65536 and len({e for _v, e, *_ in espfix}) == 1
    assert tree.tables < 200  # the 2048 aliased PTE-table uses are one table read


@pytest.mark.parametrize("mode", list(REGS_MODES), ids=[m.value for m in REGS_MODES])
def test_replayed_page_tables_print_as_the_line_by_line_listing(mode: PagingMode) -> None:
    # ``tlb_text`` replays a last-level table's text at each base it is mapped from; the VAs it prints
    # must be those ``expand`` lists, formatted one line at a time by ``info_tlb`` — for entries in every
    # MiB of the table's span (32-bit paging's tables span 4 MiB), aliased at several bases, high-half too.
    b = build(mode)
    m = b.mapper
    span = 1 << 22 if mode is PagingMode.LEGACY32 else 1 << 21
    base = 0x4000_0000
    for off in range(0, span, 0x4_1000):  # a page in each quarter MiB or so, up to the table's end
        m.map_page(base + off, 0x20_0000 + off, 4096, RW | (NX if mode is not PagingMode.LEGACY32 else 0))
    m.map_page(base + span - 0x1000, 0x9000, 4096, RW | US)
    pd_level = Level.PD
    pde = m.get_entry(base, pd_level)
    assert pde
    aliases = [base + 3 * span, 0x8000_0000 + span]
    if mode.is_ia32e:
        aliases.append((0xFFFF_8000_0000_0000 if mode is PagingMode.LONG4 else 0xFF00_0000_0000_0000) + 5 * span)
    for va in aliases:
        m.entry_addr(va, pd_level, create=True)
        m.set_entry(va, pd_level, pde)
    tree = b.space().tree("qemu")
    fast = qemu.tlb_text(tree, crlf=True)
    assert fast == qemu.info_tlb(tree.sem, expand(tree), crlf=True)
    per_table = len(range(0, span, 0x4_1000)) + 1
    assert fast.count("\r\n") == per_table * (1 + len(aliases))
