"""Paging-structure caches (SDM Vol. 3A §4.10.3; spec §1.9): a cached PDE keeps being used after the
entry changes in memory, until INVLPG, a CR3 write or a #PF on that address drops it."""

from __future__ import annotations

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.arch.modes import Features, Level, PagingMode
from earlymm.hw.cpu import Cpu
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import PhysMem

A, B = 0x40_0000, 0x40_1000  # two pages under one PDE


def machine() -> tuple[Cpu, Mapper, int, int]:
    mem = PhysMem()
    mp = Mapper(mem, PagingMode.LONG4, FrameAllocator(mem, 0x10_0000, 0x20_0000), table_flags=0x67)
    mp.map_page(A, 0x111_000, 4096, 0x62)
    mp.map_page(B, 0x222_000, 4096, 0x62)
    pde_addr = mp.entry_addr(A, Level.PD)
    assert pde_addr is not None
    # a second page table under another PDE value: B maps elsewhere there
    pt2 = mp.alloc.alloc()
    mem.write_u64(pt2 + 8 * 1, 0x333_000 | 0x63)
    cpu = Cpu(mem, Features())
    cpu.write_efer(int(Efer.LME | Efer.NXE))
    cpu.write_cr4(int(Cr4.PAE))
    cpu.write_cr3(mp.root)
    cpu.write_cr0(int(Cr0.PE | Cr0.PG | Cr0.WP))
    cpu.regs.cs_l = True
    return cpu, mp, pde_addr, pt2


def test_cached_pde_is_used_after_the_pde_changes() -> None:
    cpu, _mp, pde, pt2 = machine()
    assert cpu.mmu.translate(A).pa == 0x111_000  # fills the TLB for A and the PSC for A's PDE
    cpu.mem.write_u64(pde, pt2 | 0x63)  # retarget the PDE, no invalidation
    stale = cpu.mmu.translate(B)  # TLB miss for B, but the cached PDE still points at the old PT
    assert stale.pa == 0x222_000 and stale.first == 3  # the walk started at the PT level
    assert cpu.mmu.probe(B).pa == 0x333_000  # a full walk sees the new PDE


def test_invlpg_of_any_address_drops_the_cached_pde() -> None:
    cpu, _mp, pde, pt2 = machine()
    cpu.mmu.translate(A)
    cpu.mem.write_u64(pde, pt2 | 0x63)
    cpu.invlpg(0x7000_0000)  # an unrelated address: INVLPG flushes the PCID's paging-structure caches
    assert cpu.mmu.translate(B).pa == 0x333_000


def test_cr3_write_drops_the_cached_pde() -> None:
    cpu, _mp, pde, pt2 = machine()
    cpu.mmu.translate(A)
    cpu.mem.write_u64(pde, pt2 | 0x63)
    cpu.write_cr3(cpu.regs.cr3)
    assert cpu.mmu.translate(B).pa == 0x333_000


def test_disabling_the_tlb_disables_the_psc() -> None:
    cpu, _mp, pde, pt2 = machine()
    cpu.mmu.tlb.enabled = False
    cpu.mmu.translate(A)
    cpu.mem.write_u64(pde, pt2 | 0x63)
    assert cpu.mmu.translate(B).pa == 0x333_000


def test_a_page_fault_leaves_nothing_of_its_walk_cached() -> None:
    cpu, _mp, _pde, _pt2 = machine()
    miss = 0x40_5000  # same PDE as A, but its PTE is not present
    res = cpu.mmu.translate(miss)
    assert res.outcome == 1  # #PF
    prefixes = cpu.mmu._prefixes(miss)
    assert prefixes is not None and cpu.mmu.tlb.psc_lookup(prefixes, cpu.mmu.pcid) is None
    assert cpu.mmu.translate(A).first == 0  # and so the next walk starts at the root


def test_a_tlb_hit_reports_the_same_rights_and_key_as_the_walk() -> None:
    cpu, mp, _pde, _pt2 = machine()
    mp.map_page(0x60_0000, 0x444_000, 4096, 0x66 | 5 << 59)  # protection key 5
    walked = cpu.mmu.translate(0x60_0000)
    hit = cpu.mmu.translate(0x60_0008)
    assert walked.path and not hit.path  # the second one came from the TLB
    assert (hit.pkey, hit.user_page, hit.writable, hit.xd) == (walked.pkey, walked.user_page,
                                                                walked.writable, walked.xd) == (5, True, True, False)
