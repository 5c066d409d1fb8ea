"""TLB behaviour (spec §1.9; SDM Vol. 3A §4.10) and control-register rules (spec §1.8) of ``earlymm.hw``.

Stale translations are a feature here: after a PTE change without an invalidation the old translation
may still be used, and the tests check that it is (earlymm caches every successful translation), and
that each architectural invalidation removes exactly what it must.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from earlymm.arch.modes import Features
from earlymm.hw.cpu import Cpu
from earlymm.hw.faults import CpuException, GeneralProtection, PageFault
from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import OK, PF
from tests import reference as ref
from tests.hw.matrix_support import RW, US, G, P, Tables, boot_cpu, leaf_value

PCIDE = ref.CR4_PCIDE
PGE = ref.CR4_PGE
NOFLUSH = 1 << 63


def gp_of(fn: object, *args: int) -> GeneralProtection:
    with pytest.raises(CpuException) as info:
        fn(*args)  # type: ignore[operator]
    assert isinstance(info.value.fault, GeneralProtection), info.value.fault
    return info.value.fault


class Machine:
    """A 4-level CPU with a few 4 KiB pages in one page table, PTEs rewritable in place."""

    BASE = 0x4000_0000  # pages BASE + i*4096

    def __init__(self, *, pge: bool = True, pcid: bool = False, mode: str = "4") -> None:
        self.t = Tables(mode)
        self.mode = mode
        self.pte_addr: dict[int, int] = {}
        for i in range(8):
            self.pte_addr[i] = self.t.put(self.va(i), {}, "pte", leaf_value(mode, "pte", self.pa(i, 0), RW | US))[-1]
        self.cpu = boot_cpu(self.t.mem, mode, self.t.root)
        if pge:
            self.cpu.write_cr4(self.cpu.regs.cr4 | PGE)
        if pcid:
            self.cpu.write_cr4(self.cpu.regs.cr4 | PCIDE)

    def va(self, i: int) -> int:
        return self.BASE + i * 0x1000

    @staticmethod
    def pa(i: int, gen: int) -> int:
        return 0x1_0000_0000 + gen * 0x10_0000 + i * 0x1000

    def set_pte(self, i: int, pa: int, flags: int = RW | US) -> None:
        self.t.mem.write_u64(self.pte_addr[i], leaf_value(self.mode, "pte", pa, flags))

    def clear_pte(self, i: int) -> None:
        self.t.mem.write_u64(self.pte_addr[i], 0)

    def read_pa(self, i: int, off: int = 0x10) -> int:
        r = self.cpu.mmu.translate(self.va(i) + off)
        assert r.outcome == OK, r
        return r.pa - off


# -- stale translations and INVLPG ------------------------------------------------------------------


def test_stale_translation_after_pte_change_without_invlpg() -> None:
    m = Machine()
    assert m.read_pa(0) == m.pa(0, 0)
    m.set_pte(0, m.pa(0, 1))
    assert m.read_pa(0) == m.pa(0, 0), "a PTE change without INVLPG is not visible to a cached translation"
    m.cpu.invlpg(m.va(0) + 0x800)
    assert m.read_pa(0) == m.pa(0, 1)


def test_stale_translation_survives_unmap_until_invlpg() -> None:
    m = Machine()
    m.read_pa(1)
    m.clear_pte(1)
    assert m.read_pa(1) == m.pa(1, 0)
    m.cpu.invlpg(m.va(1))
    assert m.cpu.mmu.translate(m.va(1)).outcome == PF


def test_invlpg_only_drops_its_own_page() -> None:
    m = Machine()
    m.read_pa(2)
    m.read_pa(3)
    m.set_pte(2, m.pa(2, 1))
    m.set_pte(3, m.pa(3, 1))
    m.cpu.invlpg(m.va(2))
    assert m.read_pa(2) == m.pa(2, 1)
    assert m.read_pa(3) == m.pa(3, 0)


def test_invlpg_removes_global_translation() -> None:
    m = Machine(pge=True)
    m.set_pte(0, m.pa(0, 0), RW | US | G)
    assert m.read_pa(0) == m.pa(0, 0)
    m.set_pte(0, m.pa(0, 1), RW | US | G)
    m.cpu.write_cr3(m.t.root)  # does not remove a global translation
    assert m.read_pa(0) == m.pa(0, 0)
    m.cpu.invlpg(m.va(0))
    assert m.read_pa(0) == m.pa(0, 1)


def test_invlpg_covers_a_whole_large_page() -> None:
    t = Tables("4")
    va = 0x8000_0000
    ea = t.put(va, {}, "pde", leaf_value("4", "pde", 0x20_0000, RW))[-1]
    cpu = boot_cpu(t.mem, "4", t.root)
    assert cpu.mmu.translate(va + 0x1_2345).pa == 0x21_2345
    t.mem.write_u64(ea, leaf_value("4", "pde", 0x60_0000, RW))
    assert cpu.mmu.translate(va + 0x1_2345).pa == 0x21_2345
    cpu.invlpg(va + 0x1F_F000)  # another 4 KiB inside the same 2 MiB page
    assert cpu.mmu.translate(va + 0x1_2345).pa == 0x61_2345


def test_invlpg_of_noncanonical_address_is_a_noop() -> None:
    m = Machine()
    m.read_pa(0)
    m.set_pte(0, m.pa(0, 1))
    m.cpu.invlpg(0x8000_0000_0000 | m.va(0))  # non-canonical: no fault, no effect
    assert m.read_pa(0) == m.pa(0, 0)


# -- CR3 and CR4 flushes ----------------------------------------------------------------------------


def test_cr3_write_flushes_non_global_only() -> None:
    m = Machine(pge=True)
    m.set_pte(0, m.pa(0, 0), RW | US | G)
    m.read_pa(0)
    m.read_pa(1)
    m.set_pte(0, m.pa(0, 1), RW | US | G)
    m.set_pte(1, m.pa(1, 1))
    m.cpu.write_cr3(m.t.root)
    assert m.read_pa(0) == m.pa(0, 0), "a global translation must survive a CR3 write"
    assert m.read_pa(1) == m.pa(1, 1), "a non-global translation must not survive a CR3 write"


def test_global_bit_ignored_without_pge() -> None:
    m = Machine(pge=False)
    m.set_pte(0, m.pa(0, 0), RW | US | G)
    m.read_pa(0)
    m.set_pte(0, m.pa(0, 1), RW | US | G)
    m.cpu.write_cr3(m.t.root)
    assert m.read_pa(0) == m.pa(0, 1), "G means nothing with CR4.PGE=0"


@pytest.mark.parametrize("direction", ["clear", "set"])
def test_pge_toggle_flushes_globals(direction: str) -> None:
    m = Machine(pge=True)
    m.set_pte(0, m.pa(0, 0), RW | US | G)
    m.read_pa(0)
    m.set_pte(0, m.pa(0, 1), RW | US | G)
    cr4 = m.cpu.regs.cr4
    m.cpu.write_cr4(cr4 & ~PGE)
    if direction == "set":
        m.set_pte(0, m.pa(0, 0), RW | US | G)
        m.read_pa(0)  # cached again, as a non-global entry now
        m.set_pte(0, m.pa(0, 1), RW | US | G)
        m.cpu.write_cr4(cr4 | PGE)
    assert m.read_pa(0) == m.pa(0, 1)


def test_cr4_write_without_pge_change_keeps_translations() -> None:
    m = Machine(pge=True)
    m.read_pa(0)
    m.set_pte(0, m.pa(0, 1))
    m.cpu.write_cr4(m.cpu.regs.cr4 | 1 << 9)  # OSFXSR: no TLB flush
    assert m.read_pa(0) == m.pa(0, 0)


# -- PCID -------------------------------------------------------------------------------------------


def test_pcid_entries_survive_cr3_writes_to_other_pcids() -> None:
    m = Machine(pcid=True)
    root = m.t.root
    m.cpu.write_cr3(root | 1)
    assert m.read_pa(0) == m.pa(0, 0)  # cached under PCID 1
    m.set_pte(0, m.pa(0, 1))
    m.cpu.write_cr3(root | 2)  # PCID 2: flushes PCID 2 only
    assert m.read_pa(0) == m.pa(0, 1)  # PCID 2 walks
    m.cpu.write_cr3(root | 1 | NOFLUSH)  # back to PCID 1 without flushing it
    assert m.read_pa(0) == m.pa(0, 0), "PCID 1's translation must survive switches to another PCID"
    m.cpu.write_cr3(root | 1)  # back to PCID 1 with a flush of PCID 1
    assert m.read_pa(0) == m.pa(0, 1)


def test_cr3_bit63_no_flush_with_pcide() -> None:
    m = Machine(pcid=True)
    root = m.t.root
    m.read_pa(0)
    m.set_pte(0, m.pa(0, 1))
    m.cpu.write_cr3(root | NOFLUSH)
    assert m.read_pa(0) == m.pa(0, 0)
    assert m.cpu.regs.cr3 == root, "bit 63 of the source is not stored in CR3"
    m.cpu.write_cr3(root)
    assert m.read_pa(0) == m.pa(0, 1)


def test_cr3_bit63_without_pcide_is_reserved() -> None:
    m = Machine(pcid=False)
    gp_of(m.cpu.write_cr3, m.t.root | NOFLUSH)


def test_pcid_invlpg_is_per_pcid() -> None:
    m = Machine(pcid=True)
    root = m.t.root
    m.cpu.write_cr3(root | 1)
    m.read_pa(0)
    m.cpu.write_cr3(root | 2 | NOFLUSH)
    m.read_pa(0)
    m.set_pte(0, m.pa(0, 1))
    m.cpu.invlpg(m.va(0))  # PCID 2 only
    assert m.read_pa(0) == m.pa(0, 1)
    m.cpu.write_cr3(root | 1 | NOFLUSH)
    assert m.read_pa(0) == m.pa(0, 0)


def test_clearing_pcide_flushes_all_pcids() -> None:
    m = Machine(pcid=True)
    root = m.t.root
    m.cpu.write_cr3(root | 3)
    m.read_pa(0)
    m.set_pte(0, m.pa(0, 1))
    m.cpu.write_cr3(root | NOFLUSH)  # PCID 0, keeps PCID 3's entry; CR3[11:0]=0 so PCIDE may be cleared
    m.cpu.write_cr4(m.cpu.regs.cr4 & ~PCIDE)
    m.cpu.write_cr4(m.cpu.regs.cr4 | PCIDE)
    m.cpu.write_cr3(root | 3 | NOFLUSH)
    assert m.read_pa(0) == m.pa(0, 1)


# -- #PF invalidation -------------------------------------------------------------------------------


def test_page_fault_invalidates_the_faulting_page() -> None:
    """A cached read-only translation, then the PTE points elsewhere; a write faults (rights), and the
    #PF drops the page's TLB entry: the next read walks and sees the new frame (SDM §4.10.4.1)."""
    m = Machine()
    m.cpu.write_cr0(m.cpu.regs.cr0 | ref.CR0_WP)
    m.set_pte(4, m.pa(4, 0), US)  # read-only
    m.cpu.invlpg(m.va(4))
    assert m.read_pa(4) == m.pa(4, 0)
    m.set_pte(4, m.pa(4, 1), US)
    r = m.cpu.mmu.translate(m.va(4), 1)
    assert r.outcome == PF and r.error_code == 0x3
    assert m.read_pa(4) == m.pa(4, 1)


def test_page_fault_through_cpu_surfaces_without_idt() -> None:
    m = Machine()
    m.clear_pte(5)
    m.cpu.invlpg(m.va(5))
    with pytest.raises(CpuException) as info:
        m.cpu.load(m.va(5) + 8, 8)
    f = info.value.fault
    assert isinstance(f, PageFault)
    assert f.cr2 == m.va(5) + 8 and f.error_code == 0


def test_not_present_is_never_cached() -> None:
    m = Machine()
    m.clear_pte(6)
    m.cpu.invlpg(m.va(6))
    assert m.cpu.mmu.translate(m.va(6)).outcome == PF
    m.set_pte(6, m.pa(6, 2))
    assert m.read_pa(6) == m.pa(6, 2), "not-present → present needs no invalidation"


# -- control-register rules (spec §1.8) -------------------------------------------------------------


def long_mode_cpu(la57: bool = False) -> Cpu:
    t = Tables("5" if la57 else "4")
    return boot_cpu(t.mem, "5" if la57 else "4", t.root)


@pytest.mark.parametrize("la57", [False, True])
def test_la57_change_with_lma_is_gp(la57: bool) -> None:
    cpu = long_mode_cpu(la57)
    cr4 = cpu.regs.cr4
    gp_of(cpu.write_cr4, cr4 ^ ref.CR4_LA57)
    assert cpu.regs.cr4 == cr4
    cpu.regs.cs_l = False  # compatibility mode: LMA is still 1
    gp_of(cpu.write_cr4, cr4 ^ ref.CR4_LA57)


def test_la57_change_allowed_with_paging_off() -> None:
    """The 4↔5-level switch: drop to compatibility mode, clear PG (LMA→0), flip LA57, re-enable."""
    cpu = long_mode_cpu(False)
    cpu.regs.cs_l = False
    cpu.write_cr0(cpu.regs.cr0 & ~ref.CR0_PG)
    assert not cpu.regs.efer & ref.EFER_LMA
    cpu.write_cr4(cpu.regs.cr4 | ref.CR4_LA57)
    cpu.write_cr0(cpu.regs.cr0 | ref.CR0_PG)
    assert cpu.paging.value == "5-level"


def test_clearing_pg_in_64bit_mode_is_gp() -> None:
    cpu = long_mode_cpu()
    gp_of(cpu.write_cr0, cpu.regs.cr0 & ~ref.CR0_PG)
    assert cpu.regs.cr0 & ref.CR0_PG


def test_clearing_pg_with_pcide_is_gp() -> None:
    cpu = long_mode_cpu()
    cpu.write_cr4(cpu.regs.cr4 | PCIDE)
    cpu.regs.cs_l = False
    gp_of(cpu.write_cr0, cpu.regs.cr0 & ~ref.CR0_PG)


def test_cr3_from_compat_mode_is_truncated_to_32_bits() -> None:
    cpu = long_mode_cpu()
    cpu.regs.cs_l = False
    cpu.write_cr3(0x1_2345_6000)
    assert cpu.regs.cr3 == 0x2345_6000
    cpu.regs.cs_l = True
    cpu.write_cr3(0x1_2345_6000)
    assert cpu.regs.cr3 == 0x1_2345_6000


def test_cr3_reserved_bits_beyond_maxphyaddr_are_gp() -> None:
    t = Tables("4")
    cpu = boot_cpu(t.mem, "4", t.root, Features(maxphyaddr=40))
    gp_of(cpu.write_cr3, 1 << 40)


def pae_cpu(pdpt0: int, features: Features | None = None) -> tuple[Cpu, PhysMem, int]:
    mem = PhysMem()
    root = 0x3020  # 32-byte aligned
    mem.write_u64(root, pdpt0)
    cpu = Cpu(mem, features or Features(maxphyaddr=36))
    cpu.write_cr4(ref.CR4_PAE)
    cpu.write_cr3(root)
    return cpu, mem, root


@pytest.mark.parametrize("bad", [1 << 1, 1 << 2, 1 << 5, 1 << 7, 1 << 8, 1 << 36, 1 << 63])
def test_pae_pdpte_reserved_bits_are_gp_at_cr3_load(bad: int) -> None:
    cpu, mem, root = pae_cpu(0x5000 | P)
    cpu.write_cr0(cpu.regs.cr0 | ref.CR0_PE | ref.CR0_PG)
    assert cpu.paging.value == "pae"
    mem.write_u64(root + 8, 0x6000 | P | bad)
    gp_of(cpu.write_cr3, root)
    assert ref.pae_pdpte_reserved(36) & bad


def test_pae_pdpte_reserved_bits_are_gp_when_enabling_paging() -> None:
    cpu, _, _ = pae_cpu(0x5000 | P | RW)
    gp_of(cpu.write_cr0, cpu.regs.cr0 | ref.CR0_PE | ref.CR0_PG)
    assert not cpu.regs.cr0 & ref.CR0_PG


def test_pae_not_present_pdpte_may_hold_anything() -> None:
    cpu, _, _ = pae_cpu(0xFFFF_FFFF_FFFF_FFFE)
    cpu.write_cr0(cpu.regs.cr0 | ref.CR0_PE | ref.CR0_PG)
    assert cpu.mmu.probe(0x1000).outcome == PF


def test_pae_pdptes_are_cached_until_cr3_reload() -> None:
    cpu, mem, root = pae_cpu(0x5000 | P)
    mem.write_u64(0x5000, 0x6000 | P | RW)
    mem.write_u64(0x6000 + 8, 0x7000 | P | RW)
    mem.write_u64(0x8000, 0x9000 | P | RW)
    mem.write_u64(0x9000 + 8, 0xA000 | P | RW)
    cpu.write_cr0(cpu.regs.cr0 | ref.CR0_PE | ref.CR0_PG)
    assert cpu.mmu.probe(0x1234).pa == 0x7234
    mem.write_u64(root, 0x8000 | P)  # new PDPTE in memory: the register still holds the old one
    assert cpu.mmu.probe(0x1234).pa == 0x7234
    cpu.write_cr3(root)
    assert cpu.mmu.probe(0x1234).pa == 0xA234


def test_pcide_rules() -> None:
    t = Tables("4")
    cpu = Cpu(t.mem, Features())
    gp_of(cpu.write_cr4, PCIDE)  # LMA=0
    cpu = boot_cpu(t.mem, "4", t.root)
    cpu.write_cr3(t.root | 5)
    gp_of(cpu.write_cr4, cpu.regs.cr4 | PCIDE)  # CR3[11:0] != 0
    cpu.write_cr3(t.root)
    cpu.write_cr4(cpu.regs.cr4 | PCIDE)
    assert cpu.regs.cr4 & PCIDE
    cpu2 = boot_cpu(t.mem, "4", t.root, Features(pcid=False))
    gp_of(cpu2.write_cr4, cpu2.regs.cr4 | PCIDE)  # no PCID support


def test_clearing_pae_in_long_mode_is_gp() -> None:
    cpu = long_mode_cpu()
    gp_of(cpu.write_cr4, cpu.regs.cr4 & ~ref.CR4_PAE)


def test_efer_lme_change_with_paging_is_gp() -> None:
    cpu = long_mode_cpu()
    gp_of(cpu.write_efer, cpu.regs.efer & ~ref.EFER_LME)


def test_enabling_long_mode_paging_without_pae_is_gp() -> None:
    cpu = Cpu(PhysMem(), Features())
    cpu.write_efer(ref.EFER_LME)
    gp_of(cpu.write_cr0, cpu.regs.cr0 | ref.CR0_PE | ref.CR0_PG)


def test_pg_without_pe_is_gp() -> None:
    cpu = Cpu(PhysMem(), Features())
    gp_of(cpu.write_cr0, cpu.regs.cr0 | ref.CR0_PG)


def test_lma_follows_pg_and_lme() -> None:
    cpu = long_mode_cpu()
    assert cpu.regs.efer & ref.EFER_LMA
    cpu.regs.cs_l = False
    cpu.write_cr0(cpu.regs.cr0 & ~ref.CR0_PG)
    assert not cpu.regs.efer & ref.EFER_LMA
    cpu.write_efer(cpu.regs.efer | ref.EFER_LMA)  # LMA is read-only
    assert not cpu.regs.efer & ref.EFER_LMA


def test_gp_without_idt_is_cpu_exception() -> None:
    cpu = long_mode_cpu()
    f = gp_of(cpu.write_cr4, cpu.regs.cr4 ^ ref.CR4_LA57)
    assert f.vector == 13 and f.error_code == 0


# -- a stateful model of what may be cached ---------------------------------------------------------


class TlbMachine(RuleBasedStateMachine):
    """Rules: map, unmap, invlpg, write CR3, toggle PGE, read, write. The shadow state is, per page, the
    set of translations that may still be cached. Invariant: every access returns a fresh walk's result
    or one of those — and exactly the fresh walk when nothing may be cached."""

    N = 6

    @initialize()
    def boot(self) -> None:
        self.m = Machine(pge=True)
        self.cpu = self.m.cpu
        self.cpu.write_cr0(self.cpu.regs.cr0 | ref.CR0_WP)
        self.maybe: dict[int, set[tuple[int, bool, bool, bool]]] = {i: set() for i in range(self.N)}
        self.checked = 0

    def current(self, i: int) -> int:
        return self.m.t.mem.read_u64(self.m.pte_addr[i])

    def fresh(self, i: int, kind: int) -> ref.RefResult:
        r = self.cpu.regs
        return ref.translate(self.m.t.mem.read_int, ref.RefCpu(r.cr0, r.cr3 & ~0xFFF, r.cr4, r.efer),
                             ref.RefAccess(self.m.va(i), kind))

    @rule(i=st.integers(0, N - 1), gen=st.integers(0, 3), glob=st.booleans(), writable=st.booleans())
    def map(self, i: int, gen: int, glob: bool, writable: bool) -> None:
        self.m.set_pte(i, self.m.pa(i, gen), US | (G if glob else 0) | (RW if writable else 0))

    @rule(i=st.integers(0, N - 1))
    def unmap(self, i: int) -> None:
        self.m.clear_pte(i)

    @rule(i=st.integers(0, N - 1))
    def invlpg(self, i: int) -> None:
        self.cpu.invlpg(self.m.va(i))
        self.maybe[i] = set()

    @rule()
    def write_cr3(self) -> None:
        self.cpu.write_cr3(self.m.t.root)
        pge = bool(self.cpu.regs.cr4 & PGE)
        for i in self.maybe:
            self.maybe[i] = {e for e in self.maybe[i] if e[1] and pge}

    @rule()
    def toggle_pge(self) -> None:
        self.cpu.write_cr4(self.cpu.regs.cr4 ^ PGE)
        for i in self.maybe:
            self.maybe[i] = set()

    @rule(i=st.integers(0, N - 1), kind=st.sampled_from([0, 1]))
    def access(self, i: int, kind: int) -> None:
        want = self.fresh(i, kind)
        got = self.cpu.mmu.translate(self.m.va(i), kind)
        # A cached entry (pa, global, writable, dirty) may serve a read, or a write if writable and dirty.
        cached_ok = {e[0] for e in self.maybe[i] if kind == 0 or (e[2] and e[3])}
        if got.outcome == OK:
            allowed = cached_ok | ({want.pa} if want.outcome == ref.OK else set())
            assert got.pa in allowed, (f"page {i} {'write' if kind else 'read'}: got {got.pa:#x}, fresh walk "
                                       f"{want.outcome} {want.pa:#x}, maybe cached {sorted(map(hex, cached_ok))}")
            if want.outcome == ref.OK and got.pa == want.pa:
                e = self.current(i)
                pge = bool(self.cpu.regs.cr4 & PGE)
                self.maybe[i].add((want.pa, bool(e & G) and pge, bool(e & RW), bool(e & 0x40)))
        else:
            assert want.outcome == ref.PF, f"page {i}: earlymm faulted, a fresh walk gives {want.outcome}"
            assert got.error_code == want.error_code
            self.maybe[i] = set()  # a #PF invalidates the page's translations
        if not cached_ok:
            assert (got.outcome == OK) == (want.outcome == ref.OK)
            if got.outcome == OK:
                assert got.pa == want.pa
        self.checked += 1

    @precondition(lambda self: hasattr(self, "m"))
    @invariant()
    def tlb_holds_only_what_may_be_cached(self) -> None:
        for e in self.cpu.mmu.tlb.entries():
            i = (e.va - Machine.BASE) // 0x1000
            assert 0 <= i < self.N
            assert e.pa in {x[0] for x in self.maybe[i]}, f"TLB holds {e.pa:#x} for page {i}"


TlbMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_tlb_state_machine = TlbMachine.TestCase


# -- more invalidation cases ------------------------------------------------------------------------


def test_global_translation_is_shared_across_pcids() -> None:
    m = Machine(pcid=True)
    root = m.t.root
    m.set_pte(0, m.pa(0, 0), RW | US | G)
    m.cpu.write_cr3(root | 1)
    assert m.read_pa(0) == m.pa(0, 0)  # global entry filled under PCID 1
    m.set_pte(0, m.pa(0, 1), RW | US | G)
    m.cpu.write_cr3(root | 2)
    assert m.read_pa(0) == m.pa(0, 0), "a global translation is used whatever the current PCID"


def test_setting_smep_flushes_global_translations() -> None:
    """Spec §1.9 / SDM §4.10.4.1: a MOV to CR4 that sets SMEP invalidates all TLB entries for the
    current PCID; with CR4.PCIDE=0 every entry, global ones included, belongs to PCID 000H (the spec:
    "treat as full flush in a simulator"). A global translation must not survive."""
    m = Machine(pge=True)
    m.set_pte(0, m.pa(0, 0), RW | G)  # a supervisor page, so SMEP does not matter to a read
    m.read_pa(0)
    m.set_pte(0, m.pa(0, 1), RW | G)
    m.cpu.write_cr4(m.cpu.regs.cr4 | ref.CR4_SMEP)
    assert m.read_pa(0) == m.pa(0, 1), "global translation survived CR4.SMEP 0→1"


def test_changing_pae_flushes_global_translations() -> None:
    """32-bit → PAE paging with CR0.PG=1 (legacy mode): the MOV to CR4 that sets PAE invalidates all TLB
    entries (spec §1.9: "treat as full flush"); a global 32-bit translation must not be used under PAE."""
    mem = PhysMem()
    # 32-bit tables: PD at 0x1000, PT at 0x2000, VA 0x0040_0000 -> 0x0077_7000 (global).
    mem.write_u32(0x1000 + 1 * 4, 0x2000 | P | RW)
    mem.write_u32(0x2000, 0x0077_7000 | P | RW | G)
    # PAE tables at the same CR3: PDPT at 0x1000 (PDPTE0 -> PD 0x3000), PDE[2] -> PT 0x4000, PTE[0] -> 0x99000.
    cpu = Cpu(mem, Features())
    cpu.write_cr4(PGE | ref.CR4_PSE)
    cpu.write_cr3(0x1000)
    cpu.write_cr0(cpu.regs.cr0 | ref.CR0_PE | ref.CR0_PG)
    assert cpu.mmu.translate(0x0040_0000).pa == 0x0077_7000
    mem.write_u64(0x1000, 0x3000 | P)  # rewrite the PD page as a PDPT (its PDE[1] is in PDPTE0's high half)
    mem.write_u64(0x1008, 0)
    mem.write_u64(0x3000 + 2 * 8, 0x4000 | P | RW)
    mem.write_u64(0x4000, 0x9_9000 | P | RW | G)
    cpu.write_cr4(cpu.regs.cr4 | ref.CR4_PAE)
    assert cpu.paging.value == "pae"
    r = cpu.mmu.translate(0x0040_0000)
    assert r.outcome == OK and r.pa == 0x9_9000, f"stale 32-bit global translation used under PAE: {r.pa:#x}"
