"""Decisions of startup_64, the early #PF handler and init_mem_mapping that no other test pins down, each
checked against what the source or the spec says — never against the model's own earlier output (issue 9
item 4; tests/mutation/ changes each decision and runs these).

Sources: spec §3.3 (startup_64), §3.5–§3.7 (reset, early_make_pgtable, the RFC table, the early IDT entry),
§3.8 (init_mem_mapping); arch/x86/kernel/head_64.S, head64.c and arch/x86/mm/init.c of v3.9 and 6.1.
"""

from __future__ import annotations

import numpy as np
import pytest

from earlymm.arch.addr import VirtAddr
from earlymm.hw.events import FaultRaised
from earlymm.hw.faults import Halt
from earlymm.hw.memory import Region, RegionType
from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.kernel.context import KernelContext
from earlymm.kernel.early_fault import early_make_pgtable, install_early_idt, reset_early_page_tables
from earlymm.kernel.events import DirectMapRange, HandlerOutcome, LowPageAlloc, PoolAlloc, PoolReset
from earlymm.kernel.paravirt.native import NativeCpuOps, NativeMmuOps
from earlymm.kernel.paravirt.ops import PvOps
from earlymm.kernel.phases import Phase
from earlymm.platform.pc import pc_e820

from .conftest import GiB, MiB, make_boot

RAM, RES = RegionType.RAM, RegionType.RESERVED
K = 1 << 10


def handler_ready(profile: str = "v3.9", **kw: object) -> KernelContext:
    """The machine right after startup_64, with the early tables reset and the early IDT loaded: the state
    x86_64_start_kernel gives the first direct-map access (spec §3.4 steps 2–4)."""
    r = make_boot(profile=profile, until=Phase.STARTUP_64, **kw)  # type: ignore[arg-type]
    assert r.outcome == "stopped", r.reason
    reset_early_page_tables(r.ctx)
    install_early_idt(r.ctx)
    return r.ctx


def allocs_of(ctx: KernelContext, va: int) -> list[tuple[int, str]]:
    """Touch ``va`` (one early #PF) and return the pool pages the handler took, as (index, level)."""
    n = len(ctx.trace.events)
    ctx.rd(va)
    return [(e.index, e.level) for e in ctx.trace.events[n:] if isinstance(e, PoolAlloc)]


def resets_of(ctx: KernelContext, since: int) -> int:
    return sum(isinstance(e, PoolReset) for e in ctx.trace.events[since:])


# ---- startup_64 -------------------------------------------------------------------------------------------

def test_text_beyond_max_physmem_bits_spins_in_bad_address() -> None:
    """Spec §3.3 step 3: phys(_text) >> MAX_PHYSMEM_BITS (46) ≠ 0 → spin forever."""
    at = 1 << 46
    e820 = [*pc_e820(4 * GiB), Region(at, at + GiB, RAM)]
    r = make_boot(e820=e820, kernel_at=at, until=Phase.STARTUP_64)
    assert r.outcome == "hang" and r.phase == "startup_64"
    assert "MAX_PHYSMEM_BITS" in r.reason


@pytest.mark.parametrize(("profile", "fixmap"), [("v3.9", {506: 0}), ("current", {506: 0, 507: 1})])
def test_relocated_kernel_fixes_the_fixmap_links(profile: str, fixmap: dict[int, int]) -> None:
    """Spec §3.3 step 4: level3_kernel_pgt[511] and level2_fixmap_pgt's links get load_delta added, so they
    name the tables where the loader put them. v3.9 head_64.S: level2_fixmap_pgt[506] → level1_fixmap_pgt;
    6.1: [506], [507] → level1_fixmap_pgt's two pages in that order (FIXMAP_PMD_NUM 2). All with
    _PAGE_TABLE (0x67)."""
    at = 64 * MiB
    r = make_boot(profile=profile, kernel_at=at, until=Phase.STARTUP_64)
    ctx = r.ctx
    delta = at - 16 * MiB
    mem = ctx.platform.mem

    def where(name: str) -> int:  # the symbol's physical address in the relocated image
        return ctx.layout[name] - START_KERNEL_MAP + delta

    assert mem.read_u64(where("level3_kernel_pgt") + 8 * 511) == where("level2_fixmap_pgt") + 0x67
    fix = where("level2_fixmap_pgt")
    got = {i: mem.read_u64(fix + 8 * i) for i in range(512) if mem.read_u64(fix + 8 * i)}
    assert got == {i: where("level1_fixmap_pgt") + 4096 * page + 0x67 for i, page in fixmap.items()}


def test_rfc_identity_map_fills_all_512_pmds() -> None:
    """Spec §3.6 RFC table: 'identity map — all 512 PMDs filled' (merged -v9: only the kernel's PMDs):
    PMD[(p >> 21) + n mod 512] = p + n·2 MiB | 0xe3 for n = 0..511."""
    r = make_boot(variant="rfc", until=Phase.STARTUP_64)
    ctx, p = r.ctx, 16 * MiB
    pmd = ctx.layout["early_dynamic_pgts"] - START_KERNEL_MAP + 4096  # pool page 1, phys_base 0
    want = {((p >> 21) + n) % 512: p + n * 2 * MiB + 0xE3 for n in range(512)}
    assert {i: ctx.platform.mem.read_u64(pmd + 8 * i) for i in range(512)} == want


def test_rfc_writes_pud_j_plus_1_unmasked() -> None:
    """Spec §3.3: 'the RFC wrote PUD[j+1] unmasked'. With _text at 512 GiB − 2 MiB, j = 511: the store
    meant for PUD[0] lands one page on (in the PMD page, overwritten by the PMD fill), so the PUD page
    holds only entry 511 — where the merged code also has PUD[0]."""
    p = 0x7F_FFE0_0000
    r = make_boot(variant="rfc", mem=600 * GiB, kernel_at=p, until=Phase.STARTUP_64)
    ctx = r.ctx
    pud = ctx.layout["early_dynamic_pgts"] - START_KERNEL_MAP + (p - 16 * MiB)
    got = {i: ctx.platform.mem.read_u64(pud + 8 * i) for i in range(512) if ctx.platform.mem.read_u64(pud + 8 * i)}
    assert got == {511: pud + 4096 + 0x63}


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_relocated_kernel_keeps_brk_tables_and_bm_pte_where_it_was_loaded(profile: str) -> None:
    """Spec §3.10: __pa of a kernel-image address is va − __START_KERNEL_map + phys_base. Loaded at 64 MiB
    (phys_base 48 MiB), the BRK page-table pages (early_alloc_pgt_buf: __pa(extend_brk(…))) lie in the
    loaded image's BRK, and early_ioremap_init links __pa(bm_pte) — the loaded bm_pte — into the fixmap."""
    at = 64 * MiB
    r = make_boot(profile=profile, kernel_at=at, until=Phase.INIT_MEM_MAPPING)
    ctx = r.ctx
    lay = ctx.layout

    def loaded(name: str) -> int:
        return lay[name] - lay.text + at

    brk = [e.pa for e in ctx.trace.events if isinstance(e, LowPageAlloc) and e.source == "brk"]
    assert brk and all(loaded("__brk_base") <= pa < loaded("__brk_limit") for pa in brk)
    fix = loaded("level2_fixmap_pgt") + 8 * ctx.profile.btmap_pmd
    assert ctx.platform.mem.read_u64(fix) == loaded("bm_pte") | 0x67


# ---- clear_bss --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("profile", "zeroed"), [("v3.9", False), ("current", True)])
def test_clear_bss_zeroes_brk_only_in_61(profile: str, zeroed: bool) -> None:
    """6.1 head64.c clear_bss(): memset(__bss_start..__bss_stop) and memset(__brk_base..__brk_limit);
    v3.9 clears .bss only. Whatever the loader left in BRK is gone in 6.1 and still there in v3.9."""
    from earlymm.arch.modes import Features
    from earlymm.kernel.boot import Observer, make_context, native_x86_64
    from earlymm.kernel.consts import PROFILES
    from earlymm.kernel.context import KernelConfig
    from earlymm.platform.pc import MachineConfig

    cfg = MachineConfig(features=Features(la57=False, pks=False))
    ctx = make_context(cfg, KernelConfig(PROFILES[profile]))
    lay = ctx.layout
    brk = lay["__brk_base"] - lay.text + cfg.kernel_at
    size = lay["__brk_limit"] - lay["__brk_base"]
    ctx.platform.mem.write(brk, b"\xa5" * size)  # the loader's leftovers
    for phase in native_x86_64(ctx, Observer()):
        if phase is Phase.X86_64_START_KERNEL:
            break
    left = ctx.platform.mem.read(brk, size)
    assert (left == bytes(size)) is zeroed
    assert (left == b"\xa5" * size) is not zeroed


# ---- early_make_pgtable -----------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_present_entries_are_reused_at_each_level(profile: str) -> None:
    """Spec §3.6 steps 4–5: a present pgd/pud entry is reused, only a missing one costs a pool page;
    'each new 512 GiB region costs one extra PUD page'."""
    ctx = handler_ready(profile)
    po = ctx.profile.page_offset
    a = po + 0x1234_5678
    assert allocs_of(ctx, a) == [(0, "pud"), (1, "pmd")]
    assert allocs_of(ctx, a + 2 * MiB) == []  # same GiB: the PMD page is reused
    assert allocs_of(ctx, a + GiB) == [(2, "pmd")]  # same 512 GiB: the PUD page is reused
    assert allocs_of(ctx, a + 512 * GiB) == [(3, "pud"), (4, "pmd")]


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_full_pool_resets_and_restarts_from_the_top(profile: str) -> None:
    """Spec §3.6 step 4 (merged): an allocation with next_early_pgt ≥ 64 resets the pool and goes to
    'again' — the walk restarts at the pgd. A fault needing a PUD and a PMD page with 63 pages used takes
    page 63 for the PUD, finds no PMD page, resets, and maps with pages 0 and 1."""
    ctx = handler_ready(profile)
    ctx.wr(ctx.sym("next_early_pgt"), 63, 4)
    n = len(ctx.trace.events)
    va = ctx.profile.page_offset + 0x4_0000_0000
    assert allocs_of(ctx, va) == [(63, "pud"), (0, "pud"), (1, "pmd")]
    assert resets_of(ctx, n) == 1
    assert ctx.cpu.mmu.probe(va).ok


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_reset_forgets_everything_but_the_fault(profile: str) -> None:
    """Spec §3.5/§3.6: the pool pages are zeroed when handed out (not at the reset), the reset reloads CR3
    (flushing every non-global translation), and 'after a reset everything except the kernel image and the
    faulting address disappears'. Three faults in three GiBs with a 3-page pool: the third resets and
    reuses pages 0 and 1 — which must not still map the first two, in the tables or in the TLB."""
    ctx = handler_ready(profile, pool=3)
    po = ctx.profile.page_offset
    a, b, c = po + 0x10_0000, po + GiB + 0x10_0000, po + 2 * GiB + 0x10_0000
    assert allocs_of(ctx, a) == [(0, "pud"), (1, "pmd")]
    assert allocs_of(ctx, b) == [(2, "pmd")]
    assert allocs_of(ctx, c) == [(0, "pud"), (1, "pmd")]
    probe = ctx.cpu.mmu.probe
    assert probe(c).ok and not probe(a).ok and not probe(b).ok
    n = len(ctx.trace.events)  # and the reset's CR3 reload dropped the TLB's copy: a faults again
    ctx.rd(a)
    assert [e.cr2 for e in ctx.trace.events[n:] if isinstance(e, FaultRaised)] == [a]


def test_handler_is_inert_once_cr3_left_the_early_table() -> None:
    """Spec §3.6 step 2: CR3 ≠ phys(early_level4_pgt) → return −1, nothing touched."""
    r = make_boot(until=Phase.INIT_MEM_MAPPING)
    ctx = r.ctx
    assert ctx.cpu.regs.cr3 == ctx.pa_symbol("init_top_pgt")
    top = ctx.pa_symbol("early_top_pgt")
    before = ctx.platform.mem.read(top, 4096), ctx.rd(ctx.sym("next_early_pgt"), 4)
    assert early_make_pgtable(ctx, ctx.profile.page_offset + 0x3000_0000) == -1
    assert (ctx.platform.mem.read(top, 4096), ctx.rd(ctx.sym("next_early_pgt"), 4)) == before


def test_rfc_maps_the_whole_gib_around_the_fault() -> None:
    """Spec §3.6 RFC table: 'always allocate a new PMD page, fill all 512 entries (maps the whole 1 GiB
    around the fault)' with __PAGE_KERNEL_LARGE & ~_PAGE_GLOBAL (NX always set)."""
    ctx = handler_ready(variant="rfc")
    va = ctx.profile.page_offset + 0x4123_4567
    assert [lv for _, lv in allocs_of(ctx, va)] == ["pud", "pmd"]
    res = ctx.cpu.mmu.probe(va)
    pmd_page = res.entry_addr(ctx.cpu.mmu.plan, len(res.path) // 2 - 1) & ~0xFFF
    entries = np.frombuffer(ctx.platform.mem.read(pmd_page, 4096), dtype="<u8")
    want = (0x4000_0000 + np.arange(512, dtype=np.uint64) * np.uint64(2 * MiB)) | np.uint64(0x8000_0000_0000_00E3)
    assert (entries == want).all()


def test_rfc_resets_before_allocating_at_63() -> None:
    """Spec §3.6 RFC table: 'reset before allocating when next ≥ 63'. A fault in an empty pgd slot with 63
    pages used resets first and takes pages 0 (PUD) and 1 (PMD) — the merged code would take page 63."""
    ctx = handler_ready(variant="rfc")
    ctx.wr(ctx.sym("next_early_pgt"), 63, 4)
    n = len(ctx.trace.events)
    assert allocs_of(ctx, ctx.profile.page_offset + 0x1000_0000) == [(0, "pud"), (1, "pmd")]
    assert resets_of(ctx, n) == 1


def test_rfc_reuses_the_pud_page_only_while_the_pool_has_room() -> None:
    """Spec §3.6 RFC table: 'reuse if PGD present **and** pool not full'. With the pgd entry present and
    next_early_pgt = 64, the RFC resets and takes a new PUD page rather than reuse the present one."""
    ctx = handler_ready(variant="rfc")
    po = ctx.profile.page_offset
    assert [lv for _, lv in allocs_of(ctx, po + 0x1000_0000)] == ["pud", "pmd"]
    ctx.wr(ctx.sym("next_early_pgt"), 64, 4)
    n = len(ctx.trace.events)
    assert allocs_of(ctx, po + GiB + 0x1000_0000) == [(0, "pud"), (1, "pmd")]
    assert resets_of(ctx, n) == 1


def test_rfc_has_no_cr3_check() -> None:
    """Spec §3.6 RFC table: 'CR3 check — none' (the merged handler is inert unless CR3 = early_level4_pgt).
    With CR3 already on init_top_pgt, the RFC's early_make_pgtable still maps into early_level4_pgt."""
    r = make_boot(variant="rfc", until=Phase.INIT_MEM_MAPPING)
    ctx = r.ctx
    assert ctx.cpu.regs.cr3 == ctx.pa_symbol("init_top_pgt")
    va = ctx.profile.page_offset + 0x7_4000_0000
    assert early_make_pgtable(ctx, va) == 0
    slot = ctx.pa_symbol("early_top_pgt") + 8 * ((va >> 39) & 511)
    assert ctx.platform.mem.read_u64(slot) & 0xFFF == 0x63


# ---- the early IDT entry: early_recursion_flag ------------------------------------------------------------

def _fault_at_depth(ctx: KernelContext, flag: int, va: int) -> str:
    """Enter the early handler with early_recursion_flag = ``flag`` (as if ``flag`` handlers were already
    running) through one #PF at ``va``; the handler's outcome."""
    ctx.wr(ctx.sym("early_recursion_flag"), flag, 4)
    n = len(ctx.trace.events)
    try:
        ctx.rd(va)
    except Halt as e:
        return e.outcome
    outs = [e.outcome for e in ctx.trace.events[n:] if isinstance(e, HandlerOutcome)]
    assert outs == ["mapped"]
    return "mapped"


@pytest.mark.parametrize(("flag", "outcome"), [(0, "mapped"), (1, "mapped"), (2, "halt")])
def test_v39_halts_at_recursion_flag_2_before_trying(flag: int, outcome: str) -> None:
    """v3.9 head_64.S early_idt_handler: 'cmpl $2,early_recursion_flag(%rip); jz 1f' (hlt loop) before
    incrementing it and before early_make_pgtable — so a mappable #PF at depth 2 still halts (spec §3.7)."""
    ctx = handler_ready("v3.9")
    assert _fault_at_depth(ctx, flag, ctx.profile.page_offset + 0x1234_5678) == outcome


def test_61_maps_a_fault_at_recursion_flag_2() -> None:
    """6.1 head_64.S early_idt_handler_common increments early_recursion_flag and calls do_early_exception,
    which tries early_make_pgtable first; only early_fixup_exception (arch/x86/mm/extable.c) halts at
    early_recursion_flag > 2. A mappable #PF entered with the flag at 2 is mapped."""
    ctx = handler_ready("current")
    assert _fault_at_depth(ctx, 2, ctx.profile.page_offset + 0x1234_5678) == "mapped"


def test_61_maps_a_fault_at_recursion_flag_3() -> None:
    ctx = handler_ready("current")
    assert _fault_at_depth(ctx, 3, ctx.profile.page_offset + 0x1234_5678) == "mapped"


def test_61_unhandled_fault_at_recursion_flag_2_halts_without_a_panic_line() -> None:
    ctx = handler_ready("current")
    assert _fault_at_depth(ctx, 2, ctx.profile.page_offset + (1 << 46) + 0x1000) == "halt"


def test_61_unhandled_fault_at_recursion_flag_1_panics() -> None:
    """6.1: flag 1 → 2 in the handler, early_make_pgtable declines (beyond MAXMEM), 2 > 2 is false:
    early_fixup_exception prints 'PANIC: early exception 0x0e …' and halts."""
    ctx = handler_ready("current")
    assert _fault_at_depth(ctx, 1, ctx.profile.page_offset + (1 << 46) + 0x1000) == "panic"
    assert ctx.console[-1].startswith("PANIC: early exception 0x0e IP 10:")


# ---- CR2: the pv op (v3.9) or native_read_cr2 (6.1) -------------------------------------------------------

class CountingMmu(NativeMmuOps):
    def __init__(self, ctx: KernelContext) -> None:
        super().__init__(ctx)
        self.cr2_reads = 0

    def read_cr2(self) -> int:
        self.cr2_reads += 1
        return super().read_cr2()


@pytest.mark.parametrize(("profile", "through_pv"), [("v3.9", True), ("current", False)])
def test_early_handler_reads_cr2_where_the_source_does(profile: str, through_pv: bool) -> None:
    """v3.9 head_64.S: GET_CR2_INTO(%rdi) is pv_mmu_ops.read_cr2 under CONFIG_PARAVIRT; 6.1
    do_early_exception: early_make_pgtable(native_read_cr2()) — on purpose, no pv call (a Xen PV guest
    never gets here). One early #PF: one pv read_cr2, or none."""
    made: list[CountingMmu] = []

    def backend(ctx: KernelContext) -> PvOps:
        made.append(CountingMmu(ctx))
        return PvOps(made[0], NativeCpuOps(ctx))

    r = make_boot(profile=profile, pv=backend, until=Phase.STARTUP_64)
    ctx = r.ctx
    reset_early_page_tables(ctx)
    install_early_idt(ctx)
    ctx.rd(ctx.profile.page_offset + 0x1234_5678)
    assert made[0].cr2_reads == (1 if through_pv else 0)


# ---- init_mem_mapping: real_end, the step, the top-down rounds ---------------------------------------------

def ranges(r: object) -> list[tuple[int, int, str]]:
    ctx = r.ctx  # type: ignore[attr-defined]
    return [(e.start, e.end, e.page_size) for e in ctx.trace.events if isinstance(e, DirectMapRange)]


def pc_low() -> list[Region]:
    return [Region(0, 0x9FC00, RAM), Region(0x9FC00, 0xA0000, RES), Region(0xF0000, 0x10_0000, RES),
            Region(0x10_0000, 3 * GiB, RAM), Region(0xFFFC_0000, 4 * GiB, RES)]


# Machine A: the top of RAM is not 2 MiB aligned (5 GiB + 1 MiB). Machine B: 1.5 GiB of RAM, a hole, and
# 32 MiB of RAM below 2 GiB (the ramdisk out of the way at 64 MiB).
MACHINE_A = {"e820": [*pc_low(), Region(4 * GiB, 5 * GiB + MiB, RAM)]}
MACHINE_B = {"e820": [Region(0, 0x9FC00, RAM), Region(0x9FC00, 0xA0000, RES), Region(0xF0000, 0x10_0000, RES),
                      Region(0x10_0000, 1536 * MiB, RAM), Region(2016 * MiB, 2 * GiB, RAM)],
             "ramdisk_at": 64 * MiB}
ISA = (0, MiB, "4K")
LOW_3G = [(MiB, 2 * MiB, "4K"), (2 * MiB, GiB, "2M"), (GiB, 3 * GiB, "1G")]

# Each list is init_memory_mapping's ranges (split_mem_range after adjust and merge) in call order, worked
# out by hand from the source:
# v3.9 init_mem_mapping: real_end = memblock_find_in_range(1M, end, PMD_SIZE, PAGE_SIZE) + PMD_SIZE; step
#   2 MiB, <<= 5 whenever a round mapped more RAM than all rounds before it.
# 6.1 memory_map_top_down: memblock_phys_alloc_range(PMD_SIZE, PMD_SIZE, …) — real_end PMD-aligned; step
#   <<= 8 (get_new_step_size) once the total mapped reaches the step; then [real_end, end) if any.
ROUNDS = {
    # A, v3.9: real_end = (5G+1M − 2M) & ~4K + 2M = 5G+1M. [5G, 5G+1M) 4K (no 2 MiB block is all RAM); step
    # 64M: [5G−64M, 5G) (2M range, its GiB all RAM → 1G); step 2G: [4G, 5G−64M); step 64G: [1M, 4G).
    ("v3.9", "A"): [ISA, (5 * GiB, 5 * GiB + MiB, "4K"), (5 * GiB - 64 * MiB, 5 * GiB, "1G"),
                    (4 * GiB, 5 * GiB - 64 * MiB, "1G"), *LOW_3G],
    # A, 6.1: real_end = 5G. [5G−2M, 5G) (total 2M ≥ 2M: step 512M); [4.5G, 5G−2M) (total 512M: step 128G);
    # [1M, 4.5G) — two memblock ranges; then [real_end, end) = [5G, 5G+1M).
    ("current", "A"): [ISA, (5 * GiB - 2 * MiB, 5 * GiB, "1G"), (4608 * MiB, 5 * GiB - 2 * MiB, "1G"), *LOW_3G,
                       (4 * GiB, 4608 * MiB, "1G"), (5 * GiB, 5 * GiB + MiB, "4K")],
    # B, v3.9: real_end = 2G. [2G−2M, 2G) (step 64M); [1984M, 2046M) holds RAM [2016M, 2046M) (30M > 2M:
    # step 2G); 1984M ≤ 2G so the last round is [1M, 1984M): 2M [2M, 1G) and 2M tail [1G, 1.5G) merge.
    ("v3.9", "B"): [ISA, (2046 * MiB, 2 * GiB, "2M"), (2016 * MiB, 2046 * MiB, "2M"), (MiB, 2 * MiB, "4K"),
                    (2 * MiB, 1536 * MiB, "2M")],
    # B, 6.1: [2046M, 2G) (step 512M); [1.5G, 2046M): 30M of RAM, total 32M < 512M: the step stays;
    # [1G, 1.5G): total 544M (step 128G); [1M, 1G).
    ("current", "B"): [ISA, (2046 * MiB, 2 * GiB, "2M"), (2016 * MiB, 2046 * MiB, "2M"), (GiB, 1536 * MiB, "2M"),
                       (MiB, 2 * MiB, "4K"), (2 * MiB, GiB, "2M")],
}


@pytest.mark.parametrize(("profile", "machine"), sorted(ROUNDS))
def test_top_down_rounds_follow_the_source(profile: str, machine: str) -> None:
    r = make_boot(profile=profile, until=Phase.INIT_MEM_MAPPING, **{"A": MACHINE_A, "B": MACHINE_B}[machine])
    assert r.outcome == "stopped", r.reason
    assert ranges(r) == ROUNDS[(profile, machine)]


def test_v39_table_pages_come_from_brk_then_memblock_top_down() -> None:
    """v3.9 alloc_low_pages: the BRK buffer (INIT_PGT_BUF_SIZE = 5 pages) while it lasts and the range does
    not overlap it (init_range_memory_mapping's can_use_brk_pgt), else memblock_find_in_range(min_pfn_mapped,
    max_pfn_mapped) top-down, reserved. Worked out for 8 GiB (RAM [1M, 3G), [4G, 9G)) without 1 GiB pages:
    ISA range: PUD, PMD, PTE from BRK 0–2; round [9G−2M, 9G): GiB 8's PMD page from BRK 3; the rounds to 8G
    reuse it; round [1M, 8G): the range [1M, 3G) overlaps BRK, so GiBs 1 and 2 take 9G−4K and 9G−8K (from
    [8G, 9G)); [4G, 8G) does not: GiB 4 takes BRK 4, then BRK is spent: GiBs 5–7 take 9G−12K … 9G−20K."""
    r = make_boot(mem=8 * GiB, gbpages=False, until=Phase.INIT_MEM_MAPPING)
    got = [(e.source, e.pa) for e in r.ctx.trace.events if isinstance(e, LowPageAlloc)]
    brk0 = got[0][1]
    top = 9 * GiB
    assert got == [("brk", brk0), ("brk", brk0 + 4 * K), ("brk", brk0 + 8 * K), ("brk", brk0 + 12 * K),
                   ("memblock", top - 4 * K), ("memblock", top - 8 * K), ("brk", brk0 + 16 * K),
                   ("memblock", top - 12 * K), ("memblock", top - 16 * K), ("memblock", top - 20 * K)]


def test_split_mem_range_adjusts_before_merging() -> None:
    """6.1 split_mem_range (arch/x86/mm/init.c): adjust_range_page_size_mask, then merge ranges of equal
    masks (the order since 'x86: Fix adjust_range_size_mask calling position', 3.10 and 3.9-stable).
    [1M, 2G+2M) on RAM [1M, 3G) with 1 GiB pages: 4K head [1M, 2M); 2M [2M, 1G); 1G [1G, 2G); 2M tail
    [2G, 2G+2M) — adjusted first, the tail's GiB is all RAM, so it becomes 1G and merges with [1G, 2G);
    merged first, nothing merges, and the tail alone becomes 1G (same tables, one range more)."""
    from earlymm.kernel.init import split_mem_range
    from earlymm.kernel.init_64 import PG_LEVEL_1G, PG_LEVEL_2M
    from earlymm.kernel.memblock import Memblock
    from earlymm.kernel.mm_state import MmState

    mb = Memblock()
    mb.add(0x1000, 0x9F000 - 0x1000)
    mb.add(MiB, 3 * GiB - MiB)
    st = MmState(mb, page_size_mask=PG_LEVEL_2M | PG_LEVEL_1G)
    got = [(x.start, x.end, x.page_size) for x in split_mem_range(st, MiB, 2 * GiB + 2 * MiB)]
    assert got == [(MiB, 2 * MiB, "4K"), (2 * MiB, GiB, "2M"), (GiB, 2 * GiB + 2 * MiB, "1G")]


def test_v39_mem_2g_keeps_2m_pages_below_the_top_64m() -> None:
    """3.9.0's split_mem_range merged equal masks before adjust_range_page_size_mask — the fix's own example:
    with 2 GiB and 1 GiB pages the last round [1M, 2G−64M) splits into [1M, 2M) 4K, [2M, 1G) 2M,
    [1G, 2G−64M) 2M; merged first, [2M, 2G−64M) is 2M and its enclosing [0, 2G) is not all RAM, so no 1G."""
    r = make_boot(mem=2 * GiB, until=Phase.INIT_MEM_MAPPING)
    got = ranges(r)
    i = got.index((MiB, 2 * MiB, "4K"))  # the loop's last step; [real_end, end) is mapped after the loop
    assert got[i + 1] == (2 * MiB, 2 * GiB - 64 * MiB, "2M")


# ---- probe_page_size_mask ----------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_gbpages_without_pse(profile: str) -> None:
    """v3.9 probe_page_size_mask: 'if (direct_gbpages) page_size_mask |= 1 << PG_LEVEL_1G; if (cpu_has_pse)
    … PG_LEVEL_2M' — a CPU with 1 GiB pages but no PSE gets 1 GiB leaves and no 2 MiB ones. 6.1: no PSE, no
    large pages at all."""
    r = make_boot(profile=profile, mem=8 * GiB, pse=False, until=Phase.INIT_MEM_MAPPING)
    assert r.outcome == "stopped", r.reason
    probe, va = r.ctx.cpu.mmu.probe, r.ctx.va
    assert probe(va(2 * MiB)).page_size == 4096
    assert probe(va(5 * GiB)).page_size == (GiB if profile == "v3.9" else 4096)


def test_61_pti_on_maps_the_direct_map_without_global() -> None:
    from earlymm.arch.cpuid import CpuIdentity, Vendor

    r = make_boot(profile="current", cmdline="console=ttyS0 pti=on", identity=CpuIdentity(Vendor.AMD, 0x17, 1, 2),
                  until=Phase.INIT_MEM_MAPPING)
    res = r.ctx.cpu.mmu.probe(r.ctx.va(0x1000_0000))
    assert res.ok and not res.path[-1] & 0x100


# ---- cleanup_highmap ----------------------------------------------------------------------------------------

def _l2(ctx: KernelContext) -> list[int]:
    pa = ctx.pa_symbol("level2_kernel_pgt")
    return list(np.frombuffer(ctx.platform.mem.read(pa, 4096), dtype="<u8").tolist())


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_cleanup_highmap_keeps_exactly_text_to_brk_end(profile: str) -> None:
    """Spec §3.8 / init_64.c cleanup_highmap: over [__START_KERNEL_map, +KERNEL_IMAGE_SIZE) every non-none
    PMD below _text or above roundup(_brk_end, 2 MiB) − 1 is set to 0; the rest keep the image mapping."""
    r = make_boot(profile=profile, until=Phase.SETUP_ARCH)
    ctx = r.ctx
    lay = ctx.layout
    first = (lay.text - START_KERNEL_MAP) >> 21
    last = (((ctx.mm.brk_end + 2 * MiB - 1) & ~(2 * MiB - 1)) - 1 - START_KERNEL_MAP) >> 21
    want = [(i << 21) + 0x1E3 if first <= i <= last else 0 for i in range(512)]
    assert _l2(ctx) == want


def test_61_startup_keeps_the_pmd_at_end() -> None:
    r = make_boot(profile="current", until=Phase.STARTUP_64)
    ctx = r.ctx
    i_end = (ctx.layout.end - START_KERNEL_MAP) >> 21
    assert ctx.layout.end % (2 * MiB) == 0
    assert _l2(ctx)[i_end] == (i_end << 21) + 0x1E3


# ---- which pv op links the direct map's top level --------------------------------------------------------

class OpsLog(NativeMmuOps):
    def __init__(self, ctx: KernelContext) -> None:
        super().__init__(ctx)
        self.ctx = ctx
        self.top: list[tuple[str, int, int]] = []  # (op, entry pa, value) of stores into init_top_pgt

    def _log(self, op: str, ptr: VirtAddr, val: int) -> None:
        res = self.ctx.cpu.mmu.probe(ptr)
        if res.ok and res.pa & ~0xFFF == self.ctx.pa_symbol("init_top_pgt"):
            self.top.append((op, res.pa, val))

    def set_pgd(self, ptr: VirtAddr, val: int) -> None:
        self._log("set_pgd", ptr, val)
        super().set_pgd(ptr, val)

    def set_p4d(self, ptr: VirtAddr, val: int) -> None:
        self._log("set_p4d", ptr, val)
        super().set_p4d(ptr, val)


@pytest.mark.parametrize(("profile", "op"), [("v3.9", "set_pgd"), ("current", "set_p4d")])
def test_direct_map_pud_page_is_linked_by_the_sources_op(profile: str, op: str) -> None:
    """v3.9 kernel_physical_mapping_init → pgd_populate → set_pgd(pgd, _PAGE_TABLE | __pa(pud)); 6.1 (4-level,
    p4d folded) → p4d_populate_init(p4d_offset(pgd, vaddr), …) → set_p4d(p4d, _PAGE_TABLE | __pa(pud)).
    Either way the pgd slot of PAGE_OFFSET holds the PUD page | 0x67."""
    made: list[OpsLog] = []

    def backend(ctx: KernelContext) -> PvOps:
        made.append(OpsLog(ctx))
        return PvOps(made[0], NativeCpuOps(ctx))

    r = make_boot(profile=profile, pv=backend, until=Phase.INIT_MEM_MAPPING)
    ctx = r.ctx
    slot = ctx.pa_symbol("init_top_pgt") + 8 * ((ctx.profile.page_offset >> 39) & 511)
    stores = [(o, v) for o, pa, v in made[0].top if pa == slot]
    assert [o for o, _ in stores] == [op]
    assert stores[0][1] & 0xFFF == 0x67

