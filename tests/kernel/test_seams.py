"""The seams of issue 8: pgtable geometry as Linux has it, and pv_ops as the only way setup_arch's
builders write page tables."""

from __future__ import annotations

from array import array

import pytest

from earlymm.arch.addr import VirtAddr
from earlymm.arch.modes import Features, Level
from earlymm.kernel.boot import boot
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig, KernelContext
from earlymm.kernel.paravirt.native import NativeCpuOps, NativeMmuOps
from earlymm.kernel.paravirt.ops import PvOps, SetOp
from earlymm.kernel.pgtable import LINUX_TO_HW, PgLevel, i386, pgd_offset_pgd, x86_64
from earlymm.platform.pc import MachineConfig, pc_e820
from tests.kernel.conftest import make_boot

VA = 0xFFFF_8880_1234_5678


def test_x86_64_indices_match_the_spec_split() -> None:
    """Spec §1.2 / conventions: idx4 = (va>>39, va>>30, va>>21, va>>12) & 511; idx5 prepends va>>48."""
    g4, g5 = x86_64(l5=False, physical_mask_shift=52), x86_64(l5=True, physical_mask_shift=52)
    want4 = ((VA >> 39) & 511, (VA >> 30) & 511, (VA >> 21) & 511, (VA >> 12) & 511)
    assert (g4.pgd_index(VA), g4.pud_index(VA), g4.pmd_index(VA), g4.pte_index(VA)) == want4
    assert g4.p4d_index(VA) == 0 and g4.folded(PgLevel.P4D) and not g4.pgtable_l5_enabled
    assert (g5.pgd_index(VA), g5.p4d_index(VA)) == ((VA >> 48) & 511, (VA >> 39) & 511)
    assert g5.pgtable_l5_enabled and g5.pgdir_shift == 48 and g5.ptrs_per_p4d == 512
    assert g4.levels() == (PgLevel.PGD, PgLevel.PUD, PgLevel.PMD, PgLevel.PTE)
    assert [g5.hw_level(lv) for lv in g5.levels()] == [Level.PML5, Level.PML4, Level.PDPT, Level.PD, Level.PT]


def test_i386_geometries() -> None:
    """Spec §1.2: 32-bit PD = bits 31:22, PT = 21:12 (4-byte entries); PAE PDPT = 31:30, PD = 29:21, PT = 20:12."""
    va = 0xC123_4567
    g2, g3 = i386(pae=False), i386(pae=True)
    assert (g2.pgd_index(va), g2.pte_index(va), g2.entry_size) == (va >> 22, (va >> 12) & 1023, 4)
    assert g2.folded(PgLevel.PMD) and g2.levels() == (PgLevel.PGD, PgLevel.PTE)
    assert (g3.pgd_index(va), g3.pmd_index(va), g3.pte_index(va)) == (3, (va >> 21) & 511, (va >> 12) & 511)
    assert g3.levels() == (PgLevel.PGD, PgLevel.PMD, PgLevel.PTE) and g3.ptrs_per_pgd == 4
    assert g3.hw_level(PgLevel.PGD) is Level.PDPT and g2.hw_level(PgLevel.PGD) is Level.PD
    assert all(name in (g2.name, g3.name, "x86-64 4-level", "x86-64 5-level") for name, _ in LINUX_TO_HW)


def test_pgd_addr_end_wraps_like_unsigned_c() -> None:
    g = x86_64(l5=False, physical_mask_shift=46)
    assert g.pgd_addr_end(0xFFFF_FF80_0000_0000, 0) == 0  # boundary wraps to 0; end 0 means "to the top"
    assert g.pgd_addr_end(0x1000, 0x2000) == 0x2000
    assert g.pgd_addr_end(0x1000, 1 << 45) == 1 << 39
    assert pgd_offset_pgd(g, 0x1000, 0xFFFF_FFFF_8000_0000) == 0x1000 + 8 * 511


class RecordingMmu(NativeMmuOps):
    """The native ops, remembering every entry stored through them (physical address → value)."""

    def __init__(self, ctx: KernelContext) -> None:
        super().__init__(ctx)
        self.ctx = ctx
        self.stores: dict[int, int] = {}
        self.allocs: list[tuple[str, int]] = []

    def _store(self, ptr: VirtAddr, val: int) -> None:
        super()._store(ptr, val)
        res = self.ctx.cpu.mmu.probe(ptr)
        assert res.ok
        self.stores[res.pa] = val

    def set_entries(self, op: SetOp, ptr: VirtAddr, vals: array[int]) -> None:
        super().set_entries(op, ptr, vals)
        res = self.ctx.cpu.mmu.probe(ptr)
        assert res.ok
        for k, v in enumerate(vals.tolist()):
            self.stores[res.pa + 8 * k] = v

    def alloc_pmd(self, pfn: int) -> None:  # type: ignore[override]
        self.allocs.append(("pmd", pfn))

    def alloc_pud(self, pfn: int) -> None:  # type: ignore[override]
        self.allocs.append(("pud", pfn))

    def alloc_pte(self, pfn: int) -> None:  # type: ignore[override]
        self.allocs.append(("pte", pfn))


@pytest.mark.parametrize(("profile", "kw"), [("v3.9", {}), ("current", {}), ("v3.9", {"gbpages": False}),
                                             ("current", {"gbpages": False, "mem": 6 << 30})])
def test_every_direct_map_entry_was_written_through_pv_ops(profile: str, kw: dict[str, object]) -> None:
    """After init_mem_mapping, every non-zero entry of init_top_pgt's direct-map tree holds the value last
    stored through pv_ops at that address, and every table page below the pgd was announced with
    paravirt_alloc_* before it was linked (what Xen needs: spec §5.1)."""
    rec: list[RecordingMmu] = []

    def backend(ctx: KernelContext) -> PvOps:
        rec.append(RecordingMmu(ctx))
        return PvOps(rec[0], NativeCpuOps(ctx))

    r = make_boot(profile=profile, pv=backend, **kw)  # type: ignore[arg-type]
    assert r.outcome == "booted"
    mmu, mem, ctx = rec[0], r.ctx.platform.mem, r.ctx
    top = ctx.pa_symbol("init_top_pgt")
    first = ctx.pgt.pgd_index(ctx.profile.page_offset)
    checked, tables = 0, {"pud": set(), "pmd": set(), "pte": set()}

    def visit(table: int, level: int) -> None:
        nonlocal checked
        for i in range(512):
            addr = table + 8 * i
            e = mem.read_u64(addr)
            if not e:
                continue
            assert mmu.stores.get(addr) == e, f"entry {addr:#x} = {e:#x} was not stored through pv_ops"
            checked += 1
            if level < 3 and not e & 0x80:
                tables[("pud", "pmd", "pte")[level]].add(e >> 12 & ((1 << 40) - 1))
                visit(e & 0x000F_FFFF_FFFF_F000, level + 1)

    for i in range(first, first + 128):
        e = mem.read_u64(top + 8 * i)
        if e:
            assert mmu.stores.get(top + 8 * i) == e
            tables["pud"].add(e >> 12 & ((1 << 40) - 1))
            visit(e & 0x000F_FFFF_FFFF_F000, 1)
    assert checked > 0
    announced = {lv: {pfn for k, pfn in mmu.allocs if k == lv} for lv in tables}
    bm_pte = ctx.pa_symbol("bm_pte") >> 12  # early_ioremap_init's pmd_populate_kernel, outside the direct map
    assert announced == {**tables, "pte": tables["pte"] | {bm_pte}}


def test_5_level_direct_map_pud_pages_are_announced_before_set_p4d() -> None:
    """5-level: phys_p4d_init (init_64.c @ v6.1) links each new pud page with p4d_populate_init →
    p4d_populate (asm/pgalloc.h), which calls paravirt_alloc_pud(mm, __pa(pud) >> PAGE_SHIFT) before
    set_p4d. Every pud page under init_top_pgt's direct-map p4d pages was announced as a pud."""
    rec: list[RecordingMmu] = []

    def backend(ctx: KernelContext) -> PvOps:
        rec.append(RecordingMmu(ctx))
        return PvOps(rec[0], NativeCpuOps(ctx))

    cfg = MachineConfig(e820=tuple(pc_e820(8 << 30)), features=Features(la57=True, pks=False))
    r = boot(cfg, KernelConfig(PROFILES["current"], decompressor="merged"), pv=backend)
    assert r.outcome == "booted" and r.ctx.pgt.pgtable_l5_enabled
    mem, ctx = r.ctx.platform.mem, r.ctx
    top = ctx.pa_symbol("init_top_pgt")
    puds: set[int] = set()
    for i in range(ctx.pgt.pgd_index(ctx.page_offset), 512):
        p4d = mem.read_u64(top + 8 * i) & 0x000F_FFFF_FFFF_F000
        if i == 511 or not p4d:
            continue
        for k in range(512):
            e = mem.read_u64(p4d + 8 * k)
            if e:
                puds.add(e >> 12 & ((1 << 40) - 1))
    assert puds
    assert puds <= {pfn for kind, pfn in rec[0].allocs if kind == "pud"}
