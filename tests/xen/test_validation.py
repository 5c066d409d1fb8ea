"""Xen's page-table rules (xen/arch/x86/mm.c @ 4.2; spec §5.1): validation, pinning, ptwr emulation, and
pfn/mfn conversion under a shuffled p2m. Expected messages are Xen's MEM_LOG texts; type values are
asm-x86/mm.h's (type in the top four bits: L1 = 1, L2 = 2, …, writable = 7)."""

from __future__ import annotations

import numpy as np
import pytest

from earlymm.hw.faults import SimulationError
from earlymm.kernel.boot import BootResult
from earlymm.kernel.boot_xen import boot_xen
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig
from earlymm.kernel.phases import Phase
from earlymm.kernel.xen.p2m import mfn_to_pfn, pfn_to_mfn
from earlymm.platform.xen.consts import MmuExt
from earlymm.platform.xen.domain import DomainConfig
from earlymm.platform.xen.events import PtwrEmulated
from earlymm.platform.xen.hypervisor import Xen
from tests.kernel.conftest import make_boot
from tests.xen.conftest import xen_boot

P, RW, US, A, PSE = 0x1, 0x2, 0x4, 0x20, 0x80


@pytest.fixture
def fresh() -> BootResult:
    """A domain at its kernel's first instruction (the builder's tables pinned), to poke at."""
    return boot_xen(DomainConfig(nr_pages=(128 << 20) >> 12), KernelConfig(PROFILES["v3.9"]), trace=True,
                    until=Phase.XEN_START_KERNEL)


def xen_of(r: BootResult) -> Xen:
    x: Xen = r.ctx.platform.xen  # type: ignore[attr-defined]
    return x


def mfn(r: BootResult, pfn: int) -> int:
    return int(r.ctx.platform.p2m[pfn])  # type: ignore[attr-defined]


def l1_of(r: BootResult) -> int:
    """The mfn of the builder's first L1 table (its tables are [L4][L3][L2][L1]…)."""
    return mfn(r, r.ctx.platform.sod.tables[1][0])  # type: ignore[attr-defined]


def test_an_l1_entry_mapping_a_page_table_writable_is_refused(fresh: BootResult) -> None:
    x = xen_of(fresh)
    table = mfn(fresh, fresh.ctx.platform.sod.tables[2][0])  # type: ignore[attr-defined]
    rc, done = x.mmu_update([((l1_of(fresh) << 12) + 8 * 5, (table << 12) | P | RW | A)])
    assert rc == -22 and done == 0
    assert any("Bad type (saw 2" in line and "!= exp 7000000000000000)" in line for line in x.console)
    assert any("Error getting mfn" in line for line in x.console)


def test_read_only_mapping_of_a_page_table_is_fine(fresh: BootResult) -> None:
    x = xen_of(fresh)
    table = mfn(fresh, fresh.ctx.platform.sod.tables[2][0])  # type: ignore[attr-defined]
    assert x.mmu_update([((l1_of(fresh) << 12) + 8 * 5, (table << 12) | P | A)]) == (0, 1)
    # Xen adjusted it for a ring-3 kernel: _PAGE_USER and _PAGE_GUEST_KERNEL (bit 52)
    assert fresh.ctx.platform.mem.read_u64((l1_of(fresh) << 12) + 8 * 5) == (table << 12) | P | A | US | 1 << 52


def test_a_frame_of_someone_else_cannot_be_mapped(fresh: BootResult) -> None:
    x = xen_of(fresh)
    rc, _ = x.mmu_update([((l1_of(fresh) << 12) + 8 * 5, (0x200 << 12) | P | A)])  # a frame Xen owns
    assert rc == -22 and any("Error getting mfn 200" in line for line in x.console)


def test_superpages_are_refused(fresh: BootResult) -> None:
    x = xen_of(fresh)
    l2 = mfn(fresh, fresh.ctx.platform.sod.tables[2][0])  # type: ignore[attr-defined]
    rc, _ = x.mmu_update([((l2 << 12) + 8 * 300, (mfn(fresh, 0x4000) << 12) | P | RW | PSE)])
    assert rc == -22
    assert x.console[-1].endswith("Attempt to map superpage without allowsuperpage flag in hypervisor")


def test_xens_own_l4_slots_are_off_limits(fresh: BootResult) -> None:
    x = xen_of(fresh)
    l4 = mfn(fresh, fresh.ctx.platform.sod.tables[4][0])  # type: ignore[attr-defined]
    rc, _ = x.mmu_update([((l4 << 12) + 8 * 260, 0)])
    assert rc == -22 and "Illegal L4 update attempt in Xen-private area" in x.console[-1]


def test_pin_unpin_semantics(fresh: BootResult) -> None:
    x = xen_of(fresh)
    page = mfn(fresh, 0x7000)  # an ordinary page of the domain, all zero
    assert x.mmuext_op([(MmuExt.PIN_L1_TABLE, page)]) == 0
    assert x.types.level(page) == 1 and x.types.info(page).pinned
    assert x.mmuext_op([(MmuExt.PIN_L1_TABLE, page)]) == -22 and "already pinned" in x.console[-1]
    # while it is an L1, no writable mapping of it may be made
    assert x.mmu_update([((l1_of(fresh) << 12) + 8 * 7, (page << 12) | P | RW | A)])[0] == -22
    assert x.mmuext_op([(MmuExt.UNPIN_TABLE, page)]) == 0 and x.types.level(page) == 0
    assert x.mmuext_op([(MmuExt.UNPIN_TABLE, page)]) == -22 and "not pinned" in x.console[-1]
    assert x.mmu_update([((l1_of(fresh) << 12) + 8 * 7, (page << 12) | P | RW | A)]) == (0, 1)


def test_a_store_into_a_read_only_l1_is_emulated_and_validated(fresh: BootResult) -> None:
    ctx = fresh.ctx
    sod = ctx.platform.sod  # type: ignore[attr-defined]
    l1_va = sod.virt_base + (sod.tables[1][0] << 12)  # the first bootstrap L1, mapped read-only
    target = mfn(fresh, 0x7001)
    ctx.cpu.store(l1_va + 8 * 9, 8, (target << 12) | P | RW | A)
    assert any(isinstance(e, PtwrEmulated) and e.index == 9 for e in ctx.trace.events)
    assert ctx.platform.mem.read_u64((l1_of(fresh) << 12) + 8 * 9) == (target << 12) | P | RW | A | US | 1 << 52


def test_an_emulated_store_that_fails_validation_goes_to_the_guest(fresh: BootResult) -> None:
    """No #PF entry in the trap table yet: the refused store ends the domain with Xen's report."""
    ctx = fresh.ctx
    sod = ctx.platform.sod  # type: ignore[attr-defined]
    l1_va = sod.virt_base + (sod.tables[1][0] << 12)
    table = mfn(fresh, sod.tables[2][0])
    with pytest.raises(SimulationError, match="unhandled page fault"):
        ctx.cpu.store(l1_va + 8 * 9, 8, (table << 12) | P | RW | A)
    assert "unhandled page fault (ec=0003)" in " ".join(xen_of(fresh).console)  # write, present, kernel mode


def test_pfn_mfn_round_trips_under_a_shuffled_p2m() -> None:
    r = xen_boot()
    ctx = r.ctx
    p2m = ctx.platform.p2m  # type: ignore[attr-defined]
    assert np.count_nonzero(p2m == np.arange(len(p2m))) < len(p2m) // 100  # not the identity
    for pfn in (0, 1, 0x1A0C, 0x2345, len(p2m) - 1):
        m = pfn_to_mfn(ctx, pfn)
        assert m == int(p2m[pfn]) and mfn_to_pfn(ctx, m) == pfn
    assert mfn_to_pfn(ctx, 0x200) == (1 << 64) - 1  # Xen's own frame: no pfn


def test_final_tables_hold_mfns_under_xen_and_pfns_natively() -> None:
    r = xen_boot()
    ctx, mem = r.ctx, r.ctx.platform.mem
    p2m = ctx.platform.p2m  # type: ignore[attr-defined]
    lay = ctx.layout
    l4_pa = (int(p2m[ctx.pa(lay.init_pgt) >> 12]) << 12)
    e = mem.read_u64(l4_pa + 8 * 511)  # init_level4_pgt[511] → level3_kernel_pgt
    assert (e & ((1 << 46) - 1)) >> 12 == int(p2m[ctx.pa(lay["level3_kernel_pgt"]) >> 12])
    n = make_boot()  # the same kernel natively: the entry holds level3_kernel_pgt's physical frame
    nctx = n.ctx
    e = nctx.platform.mem.read_u64(nctx.pa(nctx.layout.init_pgt) + 8 * 511)
    assert (e & ((1 << 46) - 1) & ~0xFFF) == nctx.pa(nctx.layout["level3_kernel_pgt"])
