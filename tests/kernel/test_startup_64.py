"""startup_64's switchover identity map: the worked examples of spec §3.3, checked entry by entry."""

from __future__ import annotations

from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.kernel.layout import KernelLayout
from earlymm.kernel.phases import Phase

from .conftest import GiB, MiB, make_boot


def tables(layout: KernelLayout, kernel_at: int) -> tuple[int, int, int]:
    """Physical addresses of early_level4_pgt and the two pool pages used by the switchover map."""
    delta = kernel_at - (layout.text - START_KERNEL_MAP)
    pgd = layout.top_pgt - START_KERNEL_MAP + delta
    pool = layout["early_dynamic_pgts"] - START_KERNEL_MAP + delta
    return pgd, pool, pool + 4096


def entries(mem, table: int) -> dict[int, int]:  # type: ignore[no-untyped-def]
    return {i: mem.read_u64(table + 8 * i) for i in range(512) if mem.read_u64(table + 8 * i)}


def test_kernel_at_16m_image_24m() -> None:
    r = make_boot(kernel_at=16 * MiB, until=Phase.STARTUP_64)
    assert r.outcome == "stopped"
    mem, lay = r.ctx.platform.mem, r.ctx.layout
    pgd, pud, pmd = tables(lay, 16 * MiB)
    pg = entries(mem, pgd)
    assert pg[0] == pg[1] == pud + 0x63 and set(pg) == {0, 1, 511}
    assert entries(mem, pud) == {0: pmd + 0x63, 1: pmd + 0x63}
    assert entries(mem, pmd) == {8 + n: 0x0100_0000 + n * 2 * MiB + 0xE3 for n in range(12)}
    # the alias the spec names: VA 0x4100_0000 (PUD 1 → the same PMD page) reaches phys 0x0100_0000
    res = r.ctx.cpu.mmu.probe(0x4100_0000)
    assert res.ok and res.pa == 0x0100_0000
    assert all(c.ok for c in r.observer.final()), r.observer.final()


def test_kernel_at_1g_minus_2m_image_6m() -> None:
    p = 0x3FE0_0000
    r = make_boot(kernel_at=p, image_size=6 * MiB, until=Phase.STARTUP_64)
    mem, lay = r.ctx.platform.mem, r.ctx.layout
    assert lay.image_size == 6 * MiB
    _pgd, pud, pmd = tables(lay, p)
    assert entries(mem, pud) == {0: pmd + 0x63, 1: pmd + 0x63}
    assert entries(mem, pmd) == {511: 0x3FE0_00E3, 0: 0x4000_00E3, 1: 0x4020_00E3}
    for va in (0x3FE0_0000, 0x4000_0000, 0x403F_FFFF):
        res = r.ctx.cpu.mmu.probe(va)
        assert res.ok and res.pa == va
    assert all(c.ok for c in r.observer.final())


def test_kernel_at_512g_minus_2m() -> None:
    p = 0x7F_FFE0_0000
    r = make_boot(mem=600 * GiB, kernel_at=p, until=Phase.STARTUP_64)
    mem, lay = r.ctx.platform.mem, r.ctx.layout
    pgd, pud, pmd = tables(lay, p)
    assert {i: v for i, v in entries(mem, pgd).items() if i != 511} == {0: pud + 0x63, 1: pud + 0x63}
    assert entries(mem, pud) == {511: pmd + 0x63, 0: pmd + 0x63}
    pm = entries(mem, pmd)
    assert pm[511] == p + 0xE3 and pm[0] == p + 2 * MiB + 0xE3
    for off in range(0, lay.image_size, 2 * MiB):
        res = r.ctx.cpu.mmu.probe(p + off)
        assert res.ok and res.pa == p + off, hex(p + off)
    assert all(c.ok for c in r.observer.final())


def test_no_identity_entry_is_global_and_kernel_mapping_is() -> None:
    r = make_boot(until=Phase.STARTUP_64)
    ident = r.ctx.cpu.mmu.probe(16 * MiB)
    high = r.ctx.cpu.mmu.probe(r.ctx.layout.text)
    assert ident.ok and not ident.path[-1] & 0x100
    assert high.ok and high.path[-1] & 0x100


def test_relocated_kernel_sets_phys_base_and_fixes_the_high_mapping() -> None:
    at = 0x1_4000_0000  # 5 GiB: above 4 GiB as well
    r = make_boot(mem=8 * GiB, kernel_at=at, until=Phase.STARTUP_64)
    ctx = r.ctx
    assert ctx.phys_base == at - 16 * MiB
    res = ctx.cpu.mmu.probe(ctx.layout.text + 0x12345)
    assert res.ok and res.pa == at + 0x12345
    assert ctx.cpu.regs.cr3 == ctx.layout.top_pgt - START_KERNEL_MAP + at - 16 * MiB


def test_unaligned_load_spins_in_bad_address() -> None:
    r = make_boot(kernel_at=16 * MiB + 0x10_0000)
    assert r.outcome == "hang" and "bad_address" in r.reason


def test_cpu_without_pge_faults_at_the_cr4_write_and_triple_faults() -> None:
    # head_64.S sets CR4.PGE unconditionally; with no IDT of its own yet, the #GP escalates.
    r = make_boot(pge=False)
    assert r.outcome == "triple_fault" and r.phase == "startup_64"


def test_61_keeps_level2_kernel_pgt_through_pmd_index_of_a_2m_aligned_end() -> None:
    """head64.c @ v6.1:300-310: entries below pmd_index(_text) lose _PAGE_PRESENT, those from there up to
    'i <= pmd_index(_end)' are kept (and relocated), the rest lose _PAGE_PRESENT. With _end 2 MiB aligned
    (a 24 MiB image at 16 MiB) the PMD at pmd_index(_end), one past the image, is kept."""
    r = make_boot(profile="current", image_size=24 * MiB, until=Phase.STARTUP_64)
    mem, lay = r.ctx.platform.mem, r.ctx.layout
    assert lay.end % (2 * MiB) == 0
    l2 = lay["level2_kernel_pgt"] - START_KERNEL_MAP + (16 * MiB - (lay.text - START_KERNEL_MAP))
    first, last = (lay.text >> 21) & 511, (lay.end >> 21) & 511
    present = {i for i in range(512) if mem.read_u64(l2 + 8 * i) & 1}
    assert present == set(range(first, last + 1))
