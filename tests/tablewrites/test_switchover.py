"""``--trace-writes`` against spec §3.3's worked examples of the switchover identity map (head_64.S @ v3.9),
§3.5/§3.6 (pool reuse after reset_early_page_tables) and the Linux source's own stores. Every expected value
is the spec's or the source's formula, never the tracer's output."""

from __future__ import annotations

from earlymm.arch.modes import Features
from earlymm.kernel.boot import boot
from earlymm.kernel.consts import PROFILES, START_KERNEL_MAP
from earlymm.kernel.context import KernelConfig
from earlymm.kernel.phases import Phase
from earlymm.platform.pc import MachineConfig, pc_e820
from earlymm.tools.tablewrites import Filter, WriteTracer
from earlymm.tools.tablewrites.report import select, to_json

KERNPG_TABLE = 0x063  # _KERNPG_TABLE: P RW A D (spec §2.4)
PAGE_TABLE = 0x067  # _PAGE_TABLE: with US
IDENT_PMD = 0x0E3  # __PAGE_KERNEL_LARGE_EXEC & ~_PAGE_GLOBAL (spec §3.3 step 5)


def traced(kernel_at: int, image: int, mem: int = 4 << 30, until: Phase | None = Phase.STARTUP_64,
           profile: str = "v3.9") -> tuple[WriteTracer, dict[str, int]]:
    tr = WriteTracer()
    machine = MachineConfig(e820=tuple(pc_e820(mem)), kernel_at=kernel_at, features=Features())
    r = boot(machine, KernelConfig(PROFILES[profile]), until=until, image_size=image, instrument=tr.attach)
    lay = r.ctx.layout
    delta = kernel_at - (lay.text - START_KERNEL_MAP)

    def pa(name: str) -> int:
        return int(lay[name] - START_KERNEL_MAP + delta)
    return tr, {"pgd": pa("early_top_pgt"), "pud": pa("early_dynamic_pgts"), "pmd": pa("early_dynamic_pgts") + 4096,
                "l3k": pa("level3_kernel_pgt"), "init": pa("init_top_pgt")}


def entries(tr: WriteTracer, table_pa: int, phase: str = "startup_64") -> dict[int, int]:
    """index → last value stored, from the trace, in one table during one phase."""
    out: dict[int, int] = {}
    for v in select(tr, Filter(table_pa=table_pa)):
        r = v.run
        if r.phase != phase:
            continue
        for k in range(r.count):
            out[r.index + k] = r.new_at(k)
    return out


def nonzero(d: dict[int, int]) -> dict[int, int]:
    return {i: v for i, v in d.items() if v}


def test_kernel_at_16m_image_24m() -> None:
    """§3.3 example 1: PGD[0],[1] → PUD; PUD[0],[1] → PMD; PMD[8..19] = 16 MiB + n·2 MiB | 0xe3."""
    tr, pa = traced(0x100_0000, 24 << 20)
    assert nonzero(entries(tr, pa["pgd"])) == {0: pa["pud"] + KERNPG_TABLE, 1: pa["pud"] + KERNPG_TABLE,
                                               511: pa["l3k"] + PAGE_TABLE}
    assert nonzero(entries(tr, pa["pud"])) == {0: pa["pmd"] + KERNPG_TABLE, 1: pa["pmd"] + KERNPG_TABLE}
    assert nonzero(entries(tr, pa["pmd"])) == {8 + n: 0x100_0000 + n * (2 << 20) + IDENT_PMD for n in range(12)}
    # the twelve PMD stores are one run (a loop of consecutive leaves), in head_64.S's startup_64
    runs = [v.run for v in select(tr, Filter(table_pa=pa["pmd"]))]
    assert [(r.index, r.count, r.new_step, r.function) for r in runs] == [(8, 12, 2 << 20, "startup_64")]


def test_alias_is_listed() -> None:
    """§3.3: 'VA 0x4100_0000 → phys 0x0100_0000' — PMD[8]'s VA ranges include the alias through PUD[1]."""
    tr, pa = traced(0x100_0000, 24 << 20)
    docs, _stats = to_json(tr, Filter(table_pa=pa["pmd"], va=(0x4100_0000, 0x4100_1000)))
    assert len(docs) == 1 and docs[0]["index"] == 8 and docs[0]["count"] == 1
    ranges = [docs[0]["va"], *docs[0]["va_aliases"]]
    assert ["0x41000000", "0x41200000"] in ranges and ["0x1000000", "0x1200000"] in ranges
    assert docs[0]["new"] == hex(0x100_0000 + IDENT_PMD) and docs[0]["decoded"]["new"]["leaf"] == "2M"
    assert docs[0]["level"] == 2 and docs[0]["table"] == "early_dynamic_pgts[1]"


def test_kernel_at_1g_minus_2m() -> None:
    """§3.3 example 2: p = 1 GiB − 2 MiB, image 6 MiB: PMD[511], PMD[0], PMD[1]; PUD[0] and PUD[1] → PMD."""
    tr, pa = traced(0x3FE0_0000, 6 << 20)
    assert nonzero(entries(tr, pa["pmd"])) == {511: 0x3FE0_00E3, 0: 0x4000_00E3, 1: 0x4020_00E3}
    assert nonzero(entries(tr, pa["pud"])) == {0: pa["pmd"] + KERNPG_TABLE, 1: pa["pmd"] + KERNPG_TABLE}
    # both halves are reachable where the spec says: VA 0x3fe0_0000 via PMD 511, VA 0x4000_0000 via PMD 0
    for va, index in ((0x3FE0_0000, 511), (0x4000_0000, 0)):
        shown = [v for v in select(tr, Filter(table_pa=pa["pmd"], va=(va, va + 1)))]
        assert [v.run.index + v.first for v in shown] == [index]


def test_kernel_at_512g_minus_2m() -> None:
    """§3.3 example 3: p = 512 GiB − 2 MiB: PGD[0],[1] → PUD; j = 511 → PUD[511] and PUD[0] → PMD."""
    tr, pa = traced(0x7F_FFE0_0000, 24 << 20, mem=1 << 40)
    assert nonzero(entries(tr, pa["pgd"])) == {0: pa["pud"] + KERNPG_TABLE, 1: pa["pud"] + KERNPG_TABLE,
                                               511: pa["l3k"] + PAGE_TABLE}
    assert nonzero(entries(tr, pa["pud"])) == {511: pa["pmd"] + KERNPG_TABLE, 0: pa["pmd"] + KERNPG_TABLE}
    pmd = nonzero(entries(tr, pa["pmd"]))
    assert pmd[511] == 0x7F_FFE0_0000 + IDENT_PMD and pmd[0] == 0x80_0000_0000 + IDENT_PMD


def test_pool_reuse_after_reset() -> None:
    """§3.5/§3.6: the reset empties the pool; the first early fault takes early_dynamic_pgts[0] again, zeroes
    it (the switchover map's PUD[0],[1] go) and links it at PGD[pgd_index(PAGE_OFFSET)] = 272."""
    tr, pa = traced(0x100_0000, 24 << 20, until=Phase.X86_64_START_KERNEL)
    runs = [v.run for v in select(tr, Filter(table="early_dynamic_pgts[0]")) if v.run.function == "early_make_pgtable"]
    cleared = [r for r in runs if r.op == "memset" and r.old == pa["pmd"] + KERNPG_TABLE]
    assert cleared and cleared[0].index == 0 and cleared[0].count == 2 and cleared[0].new == 0
    assert all(r.table.use == 2 for r in runs)
    pgd = [v.run for v in select(tr, Filter(table_pa=pa["pgd"])) if v.run.function == "early_make_pgtable"]
    assert (pgd[0].index, pgd[0].new) == (272, pa["pud"] + KERNPG_TABLE)
    # reset_early_page_tables zeroes entries 0..510 (spec §3.5 step 1), the two live ones among them
    reset = [v.run for v in select(tr, Filter(table_pa=pa["pgd"])) if v.run.function == "reset_early_page_tables"]
    assert sum(r.count for r in reset) == 511 and {r.new for r in reset} == {0}


def test_init_level4_pgt_inherits_511() -> None:
    """§3.4 step 8: clear_page(init_level4_pgt); init_level4_pgt[511] = early_level4_pgt[511]."""
    tr, pa = traced(0x100_0000, 24 << 20, until=Phase.X86_64_START_KERNEL)
    got = [(v.run.index, v.run.count, v.run.new, v.run.op) for v in select(tr, Filter(table_pa=pa["init"]))]
    assert got == [(0, 512, 0, "memset"), (511, 1, pa["l3k"] + PAGE_TABLE, "store")]


def test_la57_top_entry() -> None:
    """head64.c @ 6.1 (__startup_64): with LA57, early_top_pgt[511] = level4_kernel_pgt + _PAGE_TABLE, and
    early_top_pgt is a level-5 table."""
    from earlymm.cli.boot_cmd import configure
    from earlymm.cli.main import build_parser

    args = build_parser().parse_args(["boot", "--paging", "5", "--until", "startup_64"])
    machine, kernel, until = configure(args)
    tr = WriteTracer()
    r = boot(machine, kernel, until=until, instrument=tr.attach)
    delta = machine.kernel_at - (r.ctx.layout.text - START_KERNEL_MAP)
    top = r.ctx.layout["early_top_pgt"] - START_KERNEL_MAP + delta
    l4k = r.ctx.layout["level4_kernel_pgt"] - START_KERNEL_MAP + delta
    w = [v.run for v in select(tr, Filter(table_pa=top)) if v.run.index == 511]
    assert w[0].new == l4k + PAGE_TABLE and w[0].table.level == 5
