"""A/D bits when one entry serves at several levels of one walk (self-referencing tables).

Expected values are derived by hand from the spec (§1.4 the walk, §1.6 A/D: A set in each entry used,
D in the leaf on a write, never cleared) and from the order of QEMU's ``mmu_translate`` (each table
pointer's A is stored right after that entry passed its checks, before the next level is read; the
leaf's A/D after the rights checks): a later level that reads the same entry sees the A already set, so
it writes nothing, and a write access then sets only D. ``test_unicorn_alias.py`` checks the same rules
against QEMU itself on generated forests.

Every case runs through the public ``Mmu`` API three ways: ``probe`` (no side effects, same answer),
``translate`` with the TLB off (every access walks), and ``translate`` with the default TLB and
paging-structure caches, flushed before the access (the walk the CPU makes on a miss).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from earlymm.arch.modes import Features
from earlymm.hw.memory import PhysMem
from earlymm.hw.mmu import Mmu
from earlymm.hw.regs import ControlRegs
from earlymm.hw.tlb import Tlb
from earlymm.hw.walk import OK, PF, WalkResult
from tests.hw.matrix_support import MODES, cr_values

P, RW, US, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
ROOT = 0x10_0000
R = 0x1ED  # the self-map slot (Windows' choice; any index works)


def va_of(mode: str, *indices: int, offset: int = 0) -> int:
    """The linear address with these table indices from the root down (sign-extended)."""
    _, shifts, _, _ = MODES[mode]
    va = offset
    for i, s in zip(indices, shifts, strict=False):
        va |= i << s
    top = {"4": 47, "5": 56}.get(mode)
    if top is not None and va >> top & 1:
        va |= -1 << (top + 1) & (1 << 64) - 1
    return va


@dataclass
class Machine:
    mem: PhysMem
    mmu: Mmu

    def entry(self, addr: int, size: int = 8) -> int:
        return self.mem.read_int(addr, size)


def machine(mode: str, entries: dict[int, int], tlb: str, **controls: bool) -> Machine:
    esize = MODES[mode][3]
    mem = PhysMem()
    for pa in range(ROOT, ROOT + 0x4000, 0x1000):
        mem.fill(pa, 0x1000, 0)
    for addr, value in entries.items():
        mem.write_int(addr, esize, value)
    regs = ControlRegs()
    regs.cr0, regs.cr4, regs.efer = cr_values(mode, **controls)
    regs.cr3 = ROOT
    if mode == "pae":
        regs.pdptes = tuple(mem.read_u64(ROOT + 8 * i) for i in range(4))  # type: ignore[assignment]
    mmu = Mmu(mem, regs, Features(), Tlb(enabled=tlb != "off"))
    return Machine(mem, mmu)


def run(mode: str, entries: dict[int, int], va: int, kind: int, user: bool, how: str,
        **controls: bool) -> tuple[WalkResult, Machine]:
    m = machine(mode, entries, "on" if how == "tlb" else "off", **controls)
    before = {pa: bytes(f) for pa, f in m.mem.frames.items()}
    if how == "probe":
        r = m.mmu.probe(va, kind, user)
        assert {pa: bytes(f) for pa, f in m.mem.frames.items()} == before, "probe changed memory"
        return r, m
    if how == "tlb":
        m.mmu.tlb.flush(include_global=True)
    return m.mmu.translate(va, kind, user), m


HOW = ("probe", "walk", "tlb")


def levels(r: WalkResult) -> list[int]:
    return r.path[1::2]


def updates(r: WalkResult) -> list[tuple[int, int, int]]:
    return [(u.addr, u.old, u.new) for u in r.ad_updates or []]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("mode", ["4", "5"])
def test_self_map_entry_read_at_every_level_gets_one_a_write(mode: str, how: str) -> None:
    """ROOT[R] points at ROOT: the address R,R,…,R,5 reads ROOT[R] at every level above the PTE and
    ROOT[5] as the PTE. The first read finds A clear and sets it; the others see it set."""
    n = len(MODES[mode][0])
    self_map = ROOT | P | RW
    pte = 0x2345_6000 | P | RW
    slot, five = ROOT + 8 * R, ROOT + 8 * 5
    va = va_of(mode, *([R] * (n - 1)), 5, offset=0x123)
    r, m = run(mode, {slot: self_map, five: pte}, va, 0, False, how)
    assert r.outcome == OK and r.pa == 0x2345_6123
    assert levels(r) == [self_map] + [self_map | A] * (n - 2) + [pte]
    assert updates(r) == [(slot, self_map, self_map | A), (five, pte, pte | A)]
    if how != "probe":
        assert (m.entry(slot), m.entry(five)) == (self_map | A, pte | A)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("mode", ["4", "5"])
@pytest.mark.parametrize("kind", [0, 1])
def test_self_map_entry_that_is_also_the_leaf(mode: str, kind: int, how: str) -> None:
    """R,R,…,R reads ROOT[R] at every level, the last time as the PTE: the page is ROOT itself. A is
    written once, by the first level; a write then sets D on the same entry, in a second store that
    finds A already set."""
    n = len(MODES[mode][0])
    e = ROOT | P | RW
    slot = ROOT + 8 * R
    r, m = run(mode, {slot: e}, va_of(mode, *([R] * n), offset=0x40), kind, False, how)
    assert r.outcome == OK and r.pa == ROOT + 0x40 and r.page_size == 0x1000
    assert levels(r) == [e] + [e | A] * (n - 1)
    want = [(slot, e, e | A)] + ([(slot, e | A, e | A | D)] if kind == 1 else [])
    assert updates(r) == want
    if how != "probe":
        assert m.entry(slot) == want[-1][2]


@pytest.mark.parametrize("how", HOW)
def test_rights_fault_on_an_aliased_leaf_keeps_the_a_of_its_earlier_use(how: str) -> None:
    """A user write through a read-only self-map: the walk reaches the leaf (ROOT[R] as PTE) and faults
    on rights (error P|W|U). The leaf itself gets nothing, but the same entry was a table pointer at
    the first level, where it got A before the fault."""
    e = ROOT | P | US
    slot = ROOT + 8 * R
    r, m = run("4", {slot: e}, va_of("4", R, R, R, R), 1, True, how)
    assert r.outcome == PF and r.error_code == 0x7
    assert levels(r) == [e, e | A, e | A, e | A]
    assert updates(r) == [(slot, e, e | A)]
    if how != "probe":
        assert m.entry(slot) == e | A


@pytest.mark.parametrize("how", HOW)
def test_not_present_after_an_alias(how: str) -> None:
    """R,R,7: ROOT[R] twice, then ROOT[7] (clear) as the PDE: #PF, error 0; A once, on ROOT[R]."""
    e = ROOT | P | RW | US
    slot = ROOT + 8 * R
    r, m = run("4", {slot: e}, va_of("4", R, R, 7), 0, False, how)
    assert r.outcome == PF and r.error_code == 0
    assert levels(r) == [e, e | A, 0]
    assert updates(r) == [(slot, e, e | A)]
    if how != "probe":
        assert m.entry(slot) == e | A


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", [0, 1])
def test_root_entry_that_is_a_1g_leaf_through_the_self_map(kind: int, how: str) -> None:
    """ROOT[3] has PS=1: as a PML4E that would be reserved, but R,3 reads it as a PDPTE (ROOT seen as a
    PDPT), where it is a 1 GiB leaf. ROOT[R] gets A at the first level; ROOT[3] gets A (and D) as the
    leaf."""
    e = ROOT | P | RW
    big = 0x8000_0000 | P | RW | PS
    slot, three = ROOT + 8 * R, ROOT + 8 * 3
    r, m = run("4", {slot: e, three: big}, va_of("4", R, 3, offset=0x1234_5678), kind, False, how)
    assert r.outcome == OK and r.pa == 0x8000_0000 + 0x1234_5678 and r.page_size == 1 << 30
    assert levels(r) == [e, big]
    assert updates(r) == [(slot, e, e | A), (three, big, big | A | (D if kind == 1 else 0))]
    if how != "probe":
        assert (m.entry(slot), m.entry(three)) == (e | A, big | A | (D if kind == 1 else 0))


@pytest.mark.parametrize("how", HOW)
def test_pd_entry_that_is_also_the_pte(how: str) -> None:
    """PD[R] points at the PD: R at the PD and PT levels reads PD[R] twice, as PDE and as PTE. The 4 KiB
    page is the PD itself; one A store, then D for the write."""
    pdpt, pd = ROOT + 0x1000, ROOT + 0x2000
    pml4e, pdpte = pdpt | P | RW | A, pd | P | RW | A
    pde = pd | P | RW
    entries = {ROOT: pml4e, pdpt: pdpte, pd + 8 * R: pde}
    r, m = run("4", entries, va_of("4", 0, 0, R, R, offset=0x8), 1, False, how)
    assert r.outcome == OK and r.pa == pd + 8
    assert levels(r) == [pml4e, pdpte, pde, pde | A]
    assert updates(r) == [(pd + 8 * R, pde, pde | A), (pd + 8 * R, pde | A, pde | A | D)]
    if how != "probe":
        assert (m.entry(ROOT), m.entry(pdpt), m.entry(pd + 8 * R)) == (pml4e, pdpte, pde | A | D)


@pytest.mark.parametrize("how", HOW)
def test_two_aliases_in_one_walk(how: str) -> None:
    """ROOT[1] → PDPT, PDPT[2] → PDPT, PDPT[3] → ROOT: 1,2,2,3 reads ROOT[1], PDPT[2] twice, then
    PDPT[3] as the PTE (ROOT as a page). Each entry lacking A is written once."""
    pdpt = ROOT + 0x1000
    e1, e2, e3 = pdpt | P | RW, pdpt | P | RW | US, ROOT | P
    entries = {ROOT + 8: e1, pdpt + 16: e2, pdpt + 24: e3}
    r, m = run("4", entries, va_of("4", 1, 2, 2, 3), 0, False, how)
    assert r.outcome == OK and r.pa == ROOT
    assert levels(r) == [e1, e2, e2 | A, e3]
    assert updates(r) == [(ROOT + 8, e1, e1 | A), (pdpt + 16, e2, e2 | A), (pdpt + 24, e3, e3 | A)]
    if how != "probe":
        assert (m.entry(ROOT + 8), m.entry(pdpt + 16), m.entry(pdpt + 24)) == (e1 | A, e2 | A, e3 | A)


@pytest.mark.parametrize("how", HOW)
def test_32bit_self_map(how: str) -> None:
    """The i386 recursive PDE: PD[R] → PD; R,R reads it as PDE and PTE (4-byte entries)."""
    e = ROOT | P | RW
    slot = ROOT + 4 * 0x2FD
    r, m = run("32", {slot: e}, (0x2FD << 22) | (0x2FD << 12) | 0x10, 1, False, how)
    assert r.outcome == OK and r.pa == ROOT + 0x10
    assert levels(r) == [e, e | A]
    assert updates(r) == [(slot, e, e | A), (slot, e | A, e | A | D)]
    if how != "probe":
        assert m.entry(slot, 4) == e | A | D


@pytest.mark.parametrize("how", HOW)
def test_pae_self_map_below_the_pdpte_registers(how: str) -> None:
    """PAE: PDPTE0 (a register) → PD at ROOT+0x1000, PD[R] → PD. The register is never written."""
    pd = ROOT + 0x1000
    pdpte, e = pd | P, pd | P | RW
    slot = pd + 8 * R
    r, m = run("pae", {ROOT: pdpte, slot: e}, (R << 21) | (R << 12) | 0x20, 0, False, how)
    assert r.outcome == OK and r.pa == pd + 0x20
    assert levels(r) == [pdpte, e, e | A]
    assert updates(r) == [(slot, e, e | A)]
    if how != "probe":
        assert (m.entry(ROOT), m.entry(slot)) == (pdpte, e | A)


def test_tlb_then_write_sets_only_d() -> None:
    """After a read fills the TLB, the same read hits it (nothing to write); a write finds the cached
    entry clean, walks again, sees every A set by the first walk and stores only D."""
    e = ROOT | P | RW
    slot = ROOT + 8 * R
    m = machine("4", {slot: e}, "on")
    va = va_of("4", R, R, R, R)
    first = m.mmu.translate(va, 0, False)
    assert updates(first) == [(slot, e, e | A)]
    hit = m.mmu.translate(va, 0, False)
    assert hit.ok and not hit.path and not hit.ad_updates
    w = m.mmu.translate(va, 1, False)
    assert levels(w)[-1] == e | A and updates(w) == [(slot, e | A, e | A | D)]
    assert m.entry(slot) == e | A | D
