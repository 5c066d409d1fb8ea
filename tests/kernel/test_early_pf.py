"""The #PF-driven early page tables: the spec §3.11 test vector, pool exhaustion and reset, and the
what-ifs (RFC variant, relocated kernel, pool reached through __va, no NX, MAXMEM)."""

from __future__ import annotations

from earlymm.hw.events import FaultRaised
from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.kernel.early_fault import install_early_idt, reset_early_page_tables
from earlymm.kernel.events import PoolAlloc, PoolReset
from earlymm.kernel.phases import Phase
from earlymm.platform.pc import pc_e820

from .conftest import GiB, MiB, make_boot


def faults(r):  # type: ignore[no-untyped-def]
    return [e for e in r.ctx.trace.events if isinstance(e, FaultRaised)]


def test_spec_test_vector_fault_at_0xffff880012345678() -> None:
    r = make_boot(until=Phase.STARTUP_64)
    ctx = r.ctx
    reset_early_page_tables(ctx)
    install_early_idt(ctx)
    ctx.rd(0xFFFF_8800_1234_5678)  # faults once, the early handler maps it, the read is retried
    (f,) = [e for e in faults(r) if e.cr2 == 0xFFFF_8800_1234_5678]
    assert f.vector == 14 and f.error_code == 0
    mem = ctx.platform.mem
    pool = ctx.layout["early_dynamic_pgts"] - START_KERNEL_MAP  # phys_base is 0 here
    top = ctx.pa_symbol("early_top_pgt")
    assert mem.read_u64(top + 8 * 272) == pool + 0x63  # page 0 as the PUD
    assert mem.read_u64(pool + 8 * 0) == pool + 4096 + 0x63  # page 1 as the PMD
    assert mem.read_u64(pool + 4096 + 8 * 0x91) == 0x1220_0000 | 0xE3 | 1 << 63
    # startup_64's two pages (the identity map's PUD and PMD), then the handler's two, after the reset
    allocs = [(e.index, e.va) for e in ctx.trace.events if isinstance(e, PoolAlloc)]
    assert allocs == [(0, 0x100_0000), (1, 0x100_0000), (0, 0xFFFF_8800_1234_5678), (1, 0xFFFF_8800_1234_5678)]


def test_default_boot_takes_its_first_faults_in_copy_bootdata() -> None:
    r = make_boot()
    assert r.outcome == "booted" and all(c.ok for c in r.observer.final())
    fs = faults(r)
    assert fs[0].cr2 == 0xFFFF_8800_0001_4000  # __va(boot_params) read by copy_bootdata
    assert all(f.vector == 14 and not f.error_code & 1 for f in fs)  # only not-present faults
    resets = [e for e in r.ctx.trace.events if isinstance(e, PoolReset)]
    assert resets[0].used == 2  # the switchover map's two pool pages, reclaimed first thing


def test_ramdisk_above_4g_is_read_through_the_early_handler() -> None:
    at = 6 * GiB
    r = make_boot(mem=8 * GiB, ramdisk_at=at, ramdisk_size=32 * MiB)
    assert r.outcome == "booted"
    assert any(f.cr2 == 0xFFFF_8800_0000_0000 + at for f in faults(r))
    assert any("1 update(s) found" in n for n in r.ctx.console + [str(e) for e in r.ctx.trace.events])


def test_ramdisk_above_512g_costs_an_extra_pud_page() -> None:
    at = 513 * GiB
    r = make_boot(mem=600 * GiB, ramdisk_at=at, ramdisk_size=32 * MiB)
    assert r.outcome == "booted"
    allocs = [e for e in r.ctx.trace.events if isinstance(e, PoolAlloc) and e.va == 0xFFFF_8800_0000_0000 + at]
    assert [a.level for a in allocs] == ["pud", "pmd"]  # a new 512 GiB region: PGD slot 273


def test_small_pool_resets_often_and_still_boots() -> None:
    r = make_boot(pool=2)
    assert r.outcome == "booted"
    assert r.ctx.stats.pool_resets >= 3 and r.ctx.stats.pool_high_water == 2
    assert all(c.ok for c in r.observer.final())


def test_pool_of_one_page_livelocks_and_is_reported() -> None:
    r = make_boot(pool=1)
    assert r.outcome == "livelock" and r.phase == "x86_64_start_kernel"
    assert "without the interrupted access completing" in r.reason
    assert "needs a PUD and a PMD page but the pool holds 1" in r.reason
    assert r.ctx.stats.pool_resets > 100


def test_relocated_kernel_merged_boots() -> None:
    r = make_boot(kernel_at=64 * MiB)
    assert r.outcome == "booted" and all(c.ok for c in r.observer.final())
    assert r.ctx.phys_base == 48 * MiB


def test_rfc_boots_when_not_relocated() -> None:
    r = make_boot(variant="rfc")
    assert r.outcome == "booted"


def test_rfc_with_relocated_kernel_livelocks_and_says_why() -> None:
    r = make_boot(variant="rfc", kernel_at=64 * MiB)
    assert r.outcome == "livelock"
    assert "points outside early_dynamic_pgts" in r.reason
    assert "the handler edits the pool page, the CPU reads another one" in r.reason


def test_pool_through_page_offset_recurses_until_the_recursion_flag_halts() -> None:
    r = make_boot(pool_access="page-offset")
    assert r.outcome == "halt" and "third time" in r.reason
    depths = {f.depth for f in faults(r)}
    assert depths == {0, 1, 2}  # the fault, then two nested ones inside the handler


def test_no_nx_cpu_gets_pmds_without_bit_63() -> None:
    r = make_boot(nx=False)
    assert r.outcome == "booted"
    assert not r.ctx.cpu.regs.efer & (1 << 11)
    assert r.ctx.rd(r.ctx.layout["early_pmd_flags"]) == 0xE3


def test_forcing_nx_on_a_cpu_without_it_gives_rsvd_faults() -> None:
    r = make_boot(nx=False, force_nx=True)
    assert r.outcome == "livelock"
    rsvd = [f for f in faults(r) if f.error_code & 0x8]
    assert rsvd and all(f.error_code == 0x9 for f in rsvd)  # P=1, RSVD=1, read, supervisor
    assert "bit 63 without EFER.NXE" in r.reason


def test_rfc_sets_nx_unconditionally_so_it_livelocks_without_nx() -> None:
    r = make_boot(nx=False, variant="rfc")
    assert r.outcome == "livelock" and any(f.error_code == 0x9 for f in faults(r))


def test_access_beyond_maxmem_is_declined_and_panics() -> None:
    e820 = [*pc_e820(4 * GiB), type(pc_e820(4 * GiB)[0])(64 << 40, (64 << 40) + GiB, pc_e820(4 * GiB)[0].kind)]
    r = make_boot(e820=e820, cmdline_at=(64 << 40) + 0x1000)
    assert r.outcome == "panic"
    cr2 = 0xFFFF_8800_0000_0000 + (64 << 40) + 0x1000
    assert r.reason == f"PANIC: early exception 0e rip 10:{r.ctx.cpu.regs.rip:x} error 0 cr2 {cr2:x}"
    assert r.ctx.stats.handler_declined == 1


def test_current_profile_boots_with_its_own_layout() -> None:
    r = make_boot(profile="current")
    assert r.outcome == "booted" and all(c.ok for c in r.observer.final())
    assert faults(r)[0].cr2 == 0xFFFF_8880_0001_4000  # page_offset_base of 6.x
    # 6.x's __startup_64 takes the switchover pages from the pool itself: 0 → 2
    assert next(e for e in r.ctx.trace.events if isinstance(e, PoolReset)).used == 2


def test_61_handler_retries_early_make_pgtable_at_every_depth_so_page_offset_pool_never_ends() -> None:
    """6.1 early_idt_handler_common increments early_recursion_flag and calls do_early_exception, which
    tries early_make_pgtable before anything checks the depth (only early_fixup_exception does, for a
    fault nothing handled): a handler that faults on its own __va pool access recurses without bound —
    the model's nesting guard reports it instead of the v3.9 halt at depth 2."""
    r = make_boot(profile="current", pool_access="page-offset")
    assert r.outcome == "livelock" and "nested 64 deep" in r.reason
    assert max(f.depth for f in faults(r)) >= 60
