"""Seed 004: the Xen PV guest before the fix dies in write_cr3; with xen_write_cr3_init it boots.

Expected texts are the seed's own lines (Xen 4.2's ``show_page_walk`` format, ``(XEN) `` prefix), and the
address is spec §2.5's arithmetic: VMEMMAP_START + pfn(init_level4_pgt) × sizeof(struct page) + offsetof(private)
= 0xffffea0000000000 + 0x1a0c × 56 + 48 = 0xffffea000005b2d0.
"""

from __future__ import annotations

import json

import pytest

from earlymm.cli.main import main
from earlymm.kernel.phases import BootOutcome
from earlymm.kernel.xen import mmu as xm
from earlymm.kernel.xen.p2m import pte_pfn_to_mfn
from earlymm.platform.xen.consts import MmuExt
from tests.xen.conftest import xen_boot

SEED_LINES = [
    "(XEN) d7:v0: unhandled page fault (ec=0000)",
    "(XEN) Pagetable walk from ffffea000005b2d0:",
    "(XEN)  L4[0x1d4] = 0000000000000000 ffffffffffffffff",
    "(XEN) domain_crash_sync called from entry.S",
    "(XEN) Domain 7 (vcpu#0) crashed on cpu#3:",
    "(XEN) ----[ Xen-4.2.0 x86_64 debug=n Not tainted ]----",
]


def test_seed004_address_is_spec_arithmetic() -> None:
    assert 0xFFFF_EA00_0000_0000 + 0x1A0C * 56 + 48 == 0xFFFF_EA00_0005_B2D0
    assert (0xFFFF_EA00_0005_B2D0 >> 39) & 511 == 0x1D4


def test_before_the_fix_xen_crashes_the_domain_as_the_seed_reports() -> None:
    r = xen_boot(late=True)
    assert r.outcome is BootOutcome.DOMAIN_CRASH and r.phase == "init_mem_mapping"
    console = r.ctx.platform.xen.console  # type: ignore[attr-defined]
    assert console[-len(SEED_LINES):] == SEED_LINES
    assert "xen_get_user_pgd ← xen_write_cr3 ← init_mem_mapping ← setup_arch" in r.reason
    # the fault was never bounced: no #PF entry was registered with Xen yet (spec §5.5 step 4)
    assert 14 not in r.ctx.platform.xen.trap_table  # type: ignore[attr-defined]


def test_with_the_fix_the_domain_boots_and_installs_the_full_ops() -> None:
    r = xen_boot()
    assert r.outcome is BootOutcome.BOOTED, r.reason
    assert "pagetable_init" in r.completed
    assert all(c.ok for c in r.observer.final()), [c for c in r.observer.final() if not c.ok]
    assert r.ctx.pv.mmu.full  # type: ignore[attr-defined]
    # the trap table now has the #PF entry (early_trap_pf_init → xen_write_idt_entry)
    assert 14 in r.ctx.platform.xen.trap_table  # type: ignore[attr-defined]


def test_the_full_write_cr3_now_reads_page_private_without_a_fault() -> None:
    """After xen_post_allocator_init, write_cr3 is xen_write_cr3: it reads swapper_pg_dir's struct page
    (private = 0: init_mm has no user pgd) and loads NEW_USER_BASEPTR 0."""
    r = xen_boot()
    ctx = r.ctx
    before = ctx.stats.faults.get(14, 0)
    ctx.pv.mmu.write_cr3(ctx.pa(ctx.layout.init_pgt))  # type: ignore[arg-type]
    xen = ctx.platform.xen  # type: ignore[attr-defined]
    assert ctx.stats.faults.get(14, 0) == before
    assert xen.user_root == 0 and xen.frames.get_gpfn_from_mfn(xen.kernel_root) == ctx.pa(ctx.layout.init_pgt) >> 12


@pytest.mark.parametrize("late, code", [(True, 1), (False, 0)])
def test_cli_exit_codes_and_text(capsys: pytest.CaptureFixture[str], late: bool, code: int) -> None:
    argv = ["boot", "--pv", "xen", "--mem", "256M"] + (["--xen-write-cr3", "late"] if late else [])
    assert main(argv) == code
    out = capsys.readouterr().out
    assert "hypercall mmuext_op: PIN_L4_TABLE" in out and "Xen validated mfn" in out
    if late:
        assert all(line in out for line in SEED_LINES)
        assert "guest call chain: xen_get_user_pgd ← xen_write_cr3 ← init_mem_mapping ← setup_arch" in out
    else:
        assert "xen_post_allocator_init" in out and "FAIL" not in out


def test_cli_json_has_the_xen_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--pv", "xen", "--mem", "256M", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    x = doc["stats"]["xen"]
    assert doc["outcome"] == "booted" and x["pins"] >= 2 and x["unpins"] >= 1
    assert {"mmu_update", "mmuext_op", "update_va_mapping", "set_trap_table"} <= set(x["hypercalls"])
    assert {"L1", "L2", "L3", "L4"} <= set(x["tables_validated"])


def test_write_cr3_after_post_allocator_init_also_loads_the_user_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """arch/x86/xen/mmu.c @ v3.9: xen_write_cr3 queues __xen_write_cr3(true, cr3) and then
    __xen_write_cr3(false, __pa(user_pgd) or 0) — MMUEXT_NEW_BASEPTR, then MMUEXT_NEW_USER_BASEPTR;
    xen_write_cr3_init, installed until xen_post_allocator_init, queues only the first. After a booted
    domain's xen_post_allocator_init, a write_cr3 queues both."""
    r = xen_boot()
    assert r.outcome is BootOutcome.BOOTED, r.reason
    ops: list[MmuExt] = []
    real = xm.xen_mc_entry

    def record(ctx: object, kind: str, args: list[tuple[int, int]]) -> None:
        if kind == "mmuext_op":
            ops.extend(MmuExt(cmd) for cmd, _ in args)
        real(ctx, kind, args)  # type: ignore[arg-type]

    monkeypatch.setattr(xm, "xen_mc_entry", record)
    r.ctx.pv.mmu.write_cr3(r.ctx.pa(r.ctx.layout.init_pgt))  # type: ignore[arg-type]
    assert [op for op in ops if op in (MmuExt.NEW_BASEPTR, MmuExt.NEW_USER_BASEPTR)] == \
        [MmuExt.NEW_BASEPTR, MmuExt.NEW_USER_BASEPTR]


def test_post_allocator_init_marks_init_mms_tables_pinned() -> None:
    """arch/x86/xen/mmu.c @ v3.9: xen_post_allocator_init ends with xen_mark_init_mm_pinned, a
    xen_pgd_walk of init_mm that SetPagePinned()s every page-table page — swapper_pg_dir (init_level4_pgt)
    first. Read back from its struct page in the vmemmap."""
    r = xen_boot()
    assert r.outcome is BootOutcome.BOOTED, r.reason
    assert xm.page_pinned(r.ctx, r.ctx.layout.init_pgt)


def test_mask_rw_pte_write_protects_the_page_table_buffer() -> None:
    """arch/x86/xen/mmu.c @ v3.9 mask_rw_pte: a PTE for a pfn in [pgt_buf_start, pgt_buf_top) written
    outside early_ioremap's PTE page is write-protected; inside it (is_early_ioremap_ptep) every pfn but
    pgt_buf_end - 1, the page just allocated, is write-protected. None of the modelled boots writes such a
    PTE fresh (the buffer lies in Xen's initial mapping), so the rule is checked directly."""
    r = xen_boot()
    ctx, st = r.ctx, r.ctx.mm
    assert st is not None and st.pgt_buf_start < st.pgt_buf_end <= st.pgt_buf_top
    bm = ctx.sym("bm_pte")

    def rw(ptep: int, pfn: int) -> bool:
        return bool(xm.mask_rw_pte(ctx, ptep, pte_pfn_to_mfn(ctx, pfn << 12 | 0x63)) & 0x2)

    elsewhere = bm + 4096  # not early_ioremap's bm_pte page
    assert not rw(elsewhere, st.pgt_buf_start) and not rw(elsewhere, st.pgt_buf_top - 1)
    assert rw(elsewhere, st.pgt_buf_top) and rw(elsewhere, 0x100)
    assert rw(bm + 8, st.pgt_buf_end - 1)
    assert not rw(bm + 8, 0x100) and not rw(bm + 8, st.pgt_buf_start)
