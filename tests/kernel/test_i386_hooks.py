"""Seed 002's paravirt page-table hooks, native backend (arch/i386/mm/init.c @ 2.6.21, spec §5.6): the
entries each hook writes in both modes, the seam calls they make, and the PAE start hook writing 8-byte
PDPT entries into the page the CPU still uses as head.S's non-PAE directory.

Expected values come from the source: head.S's PDEs are ``pg0 + 4 KiB·i | 0x007`` (PRESENT+RW+USER),
the start hook's entries ``__pa(empty_zero_page) | _PAGE_PRESENT``, the done hook's ``pgd[0] =
pgd[USER_PTRS_PER_PGD]``; an 8-byte entry i covers non-PAE PDEs 2i (low half) and 2i+1 (high half).
"""

from __future__ import annotations

import re

from earlymm.arch.modes import PagingMode
from earlymm.hw.walk import OK
from earlymm.kernel.i386.events import EntryStore, LiveEntryChanged, PvNotify
from earlymm.kernel.i386.paravirt import NativeInitOps, native_pv_ops
from earlymm.kernel.phases import BootOutcome, Phase
from tests.kernel.i386_support import PAGE_OFFSET, Recorder, phys, recording, run, u32s, u64s

START, DONE = "native_pagetable_setup_start", "native_pagetable_setup_done"
HEAD_S = 0x007
MiB = 1 << 20


def _stores(r: object, fn: str) -> list[EntryStore]:
    return [e for e in r.ctx.trace.events if isinstance(e, EntryStore) and e.fn == fn]  # type: ignore[attr-defined]


def test_pae_start_hook_writes_zero_page_pdpt_entries_and_clears_the_kernel_entry() -> None:
    r = run(True, until=Phase.PAGETABLE_SETUP_START)
    zero = phys(r, "empty_zero_page") | 1
    assert u64s(r, phys(r, "swapper_pg_dir"), 4) == (zero, zero, zero, 0)
    assert zero & 0b110 == 0  # PDPTE bits 2:1 are reserved: P only (spec §1.3)
    assert [(e.op, e.index, e.new) for e in _stores(r, START)] == [("set_pgd", 0, zero), ("set_pgd", 1, zero),
                                                                    ("set_pgd", 2, zero), ("memset", 3, 0)]
    assert r.ctx.cpu.mmu.mode is PagingMode.LEGACY32  # still head.S's 2-level directory


def test_pae_start_hook_clobbers_non_pae_pdes_0_to_5_and_7_and_keeps_the_kernel_pdes() -> None:
    # a 27 MiB image: head.S maps 0-32 MiB, so identity PDEs 0..7 and kernel PDEs 768..775 are its own
    r = run(True, until=Phase.PAGETABLE_SETUP_START, image_size=27 * MiB)
    pd, pg0, zero = phys(r, "swapper_pg_dir"), phys(r, "pg0"), phys(r, "empty_zero_page") | 1
    head_s = tuple(pg0 + 0x1000 * i | HEAD_S for i in range(8))
    assert u32s(r, pd, 8) == (zero, 0, zero, 0, zero, 0, 0, 0)
    accessed = 0x20  # the CPU sets A in the entries it uses; head.S wrote 0x007
    assert tuple(e & ~accessed for e in u32s(r, pd + 4 * 768, 8)) == head_s  # byte 3072 on: untouched
    live = [(e.index, e.old & ~accessed, e.new) for e in r.ctx.trace.events
            if isinstance(e, LiveEntryChanged) and e.fn == START]
    assert live == [(i, head_s[i], zero if i in (0, 2, 4) else 0) for i in range(8)]
    cpu = r.ctx.cpu
    for va in (0x10_0000, 5 * MiB, 23 * MiB, 25 * MiB, 31 * MiB):  # 0-24 MiB clobbered, 24-32 MiB cleared
        res = cpu.mmu.probe(va)
        assert res.outcome != OK and res.error_code & 1 == 0, hex(va)  # not present
    for va in (PAGE_OFFSET + 0x10_0000, PAGE_OFFSET + 31 * MiB):
        assert cpu.mmu.probe(va).pa == va - PAGE_OFFSET


def test_pae_start_hook_on_a_small_image_changes_only_what_it_overwrites() -> None:
    r = run(True, until=Phase.PAGETABLE_SETUP_START)  # 3 MiB image: head.S maps 0-8 MiB (PDEs 0, 1)
    pg0, zero = phys(r, "pg0"), phys(r, "empty_zero_page") | 1
    live = [(e.index, e.old, e.new) for e in r.ctx.trace.events if isinstance(e, LiveEntryChanged) and e.fn == START]
    assert live == [(0, pg0 | HEAD_S, zero), (1, pg0 + 0x1000 | HEAD_S, 0), (2, 0, zero), (4, 0, zero)]


def test_pae_done_hook_aliases_the_kernel_pmd_at_pgd_0() -> None:
    r = run(True)
    pgd = u64s(r, phys(r, "swapper_pg_dir"), 4)
    zero = phys(r, "empty_zero_page") | 1
    assert pgd[0] == pgd[3] and pgd[1] == pgd[2] == zero and pgd[3] & 0xFFF == 1
    done = _stores(r, DONE)
    assert [(e.op, e.index, e.old, e.new) for e in done] == [("set_pgd", 0, zero, pgd[3])]
    # the alias maps the first kernel GiB at 0: identity for lowmem, as SMP's real-mode AP start-up needs
    assert r.ctx.cpu.mmu.probe(0x10_0000).pa == 0x10_0000 == r.ctx.cpu.mmu.probe(PAGE_OFFSET + 0x10_0000).pa


def test_non_pae_hooks_store_nothing_and_announce_swapper_pg_dir() -> None:
    r = run(False)
    assert _stores(r, START) == [] and _stores(r, DONE) == []
    notes = [(e.op, e.pfn) for e in r.ctx.trace.events if isinstance(e, PvNotify) and e.fn == START]
    assert notes == [("alloc_pd", phys(r, "swapper_pg_dir") >> 12)]
    pg0 = phys(r, "pg0")
    assert u32s(r, phys(r, "swapper_pg_dir"), 2) == (pg0 | HEAD_S, pg0 + 0x1000 | HEAD_S)  # head.S's identity


def test_the_seam_calls_a_backend_receives() -> None:
    """What a paravirt backend sees of the native hooks and builders: with PAE, pgd stores reach set_pud (the
    pud is folded into the pgd) and pmd stores set_pmd; without PAE every directory store is set_pmd."""
    recs: list[Recorder] = []
    r = run(True, pv=recording(recs))
    base, zero = r.ctx.layout["swapper_pg_dir"], phys(r, "empty_zero_page") | 1
    pgd3 = u64s(r, phys(r, "swapper_pg_dir"), 4)[3]
    calls = recs[0].calls
    assert calls[:3] == [("set_pud", base + 8 * i, zero) for i in range(3)]
    assert calls[3:5] == [("alloc_pmd", pgd3 >> 12, 0), ("set_pud", base + 24, pgd3)]
    assert calls[-1] == ("set_pud", base, pgd3)
    recs.clear()
    r = run(False, pv=recording(recs))
    ops = {c[0] for c in recs[0].calls}
    assert ops == {"alloc_pmd", "alloc_pte", "set_pmd"} and recs[0].calls[0] == (
        "alloc_pmd", phys(r, "swapper_pg_dir") >> 12, 0)


def test_identity_access_after_the_pae_clobber_faults_into_ignore_int() -> None:
    """Why the clobber is harmless only because nothing runs on the identity map any more: a backend whose
    start hook touched it afterwards would fault into head.S's ignore_int, whose iret cannot return."""

    class LateIdentity(NativeInitOps):
        def pagetable_setup_start(self, base: int) -> None:  # type: ignore[override]
            super().pagetable_setup_start(base)  # type: ignore[arg-type]
            self.ctx.rd(0x10_0000)

    def make(ctx):  # type: ignore[no-untyped-def]
        ops = native_pv_ops(ctx)
        ops.init = LateIdentity(ctx)
        return ops

    r = run(True, pv=make)
    assert r.outcome is BootOutcome.HANG and r.phase == "pagetable_setup_start"
    last = r.console.splitlines()[-1]  # printk("%p %p %p") of CS, EIP and the #PF error code
    assert re.fullmatch(r"Unknown interrupt or fault at EIP 00000060 c0[0-9a-f]{6} 00000000", last)
    assert r.ctx.cpu.regs.cr2 == 0x10_0000
