"""Exhaustive permission matrix: earlymm's ``Mmu.probe``/``translate`` against ``tests/reference.py``.

In the spirit of kvm-unit-tests ``x86/access.c``: every RW/US/XD combination of the leaf entry and of
the entry above it, for every page size of every paging mode, × access kind × user/supervisor/implicit
× CR0.WP × EFER.NXE × CR4.SMEP × CR4.SMAP × EFLAGS.AC, plus slices for the upper levels, protection keys,
pre-set accessed/dirty bits and reserved bits. A disagreement is reported under a kvm-unit-tests style
name such as ``pte.rw=0 pde.us=1 user write cr0.wp=1``.
"""

from __future__ import annotations

import itertools

import pytest

from earlymm.arch.modes import Features
from earlymm.hw.cpu import Cpu
from earlymm.hw.memory import PhysMem
from earlymm.hw.mmu import Mmu
from earlymm.hw.regs import ControlRegs
from earlymm.hw.tlb import Tlb
from earlymm.hw.walk import OK, PF
from tests import reference as ref
from tests.hw.matrix_support import (
    MODE_WORDS,
    MODES,
    PS,
    RW,
    US,
    A,
    D,
    Env,
    P,
    Pair,
    Tables,
    access_words,
    accesses,
    cr_values,
    flag_words,
    leaf_size,
    leaf_value,
    report,
    rights_combos,
)

# -- the environments ---------------------------------------------------------------------------------


def rights_envs(mode: str) -> list[Env]:
    """CR0.WP × EFER.NXE × CR4.SMEP × CR4.SMAP (EFLAGS.AC varies per access, only where SMAP is on)."""
    envs = []
    for wp, nxe, smep, smap in itertools.product((False, True), repeat=4):
        cr0, cr4, efer = cr_values(mode, wp=wp, nxe=nxe, smep=smep, smap=smap)
        envs.append(Env(mode, cr0, cr4, efer))
    return envs


def run_matrix(pair: Pair, cases: list[tuple[int, list[int], str]], envs: list[Env],
               check_translate: bool = True) -> tuple[list[str], int]:
    """Every case (va, entry addresses, words) × env × access. Returns (failures, number compared)."""
    failures: list[str] = []
    n = 0
    acc_list = accesses()
    for env in envs:
        pair.set(env)
        smap = bool(env.cr4 & ref.CR4_SMAP)
        for va, addrs, words in cases:
            for kind, priv in acc_list:
                user = priv == "user"
                implicit = priv == "implicit"
                for ac in ((False, True) if smap and not user else (False,)):
                    n += 1
                    diff = pair.compare(va, kind, user, implicit, ac, addrs, check_translate)
                    if diff:
                        failures.append(f"{MODE_WORDS[env.mode]}: {words} {access_words(kind, priv, ac, smap)} "
                                        f"{env.words()}: {diff}")
    return failures, n


def leaf_pa(mode: str, size: int, i: int) -> int:
    """A distinct, aligned physical page per case; above 4 GiB where the mode can reach it."""
    if mode == "32":
        if size == 1 << 22:
            return ((i & 1) << 32) | (0x4000_0000 + i * size)  # PSE-36: alternate cases above 4 GiB
        return 0x8000_0000 + i * size
    if mode == "pae":
        return 0x1_0000_0000 + i * size
    return 0x10_0000_0000 + i * size


def offset_for(size: int) -> int:
    return {1 << 12: 0xABC, 1 << 21: 0x1_2ABC, 1 << 22: 0x2_3ABC, 1 << 30: 0x1234_5ABC}[size]


def build_leaf_parent(mode: str, leaf: str, *, preset: int = 0,
                      features: Features | None = None) -> tuple[Pair, list[tuple[int, list[int], str]]]:
    """Each RW/US/XD combination of ``leaf`` × each of its parent entry (no parent for a 4 MiB page or a
    PAE PDE, whose parents carry no rights). Every entry starts with A=D=0 unless ``preset``."""
    names, shifts, _, _ = MODES[mode]
    li = names.index(leaf)
    parent = names[li - 1] if li > 0 and not (mode == "pae" and names[li - 1] == "pdpte") else None
    xd = mode != "32"
    t = Tables(mode)
    size = leaf_size(mode, leaf)
    cases = []
    i = 0
    for pflags in rights_combos(xd) if parent else [None]:
        for lflags in rights_combos(xd):
            pidx = rights_combos(xd).index(pflags) + 1 if pflags is not None else 1
            lidx = rights_combos(xd).index(lflags) + 1
            va = lidx << shifts[li]
            if parent:
                va |= pidx << shifts[li - 1]
            for lvl in range(li - 1 if parent else li):
                va |= 1 << shifts[lvl]  # fixed, fully permissive indices above
            if mode in ("32", "pae"):
                va &= 0xFFFF_FFFF
            va |= offset_for(size)
            upper = {n: P | RW | US | preset for n in names[:li]}
            if mode == "pae":
                upper["pdpte"] = P
            if parent and pflags is not None:
                upper[parent] = pflags | preset
            addrs = t.put(va, upper, leaf, leaf_value(mode, leaf, leaf_pa(mode, size, i), lflags | preset))
            words = flag_words(leaf, lflags, xd=xd)
            if parent and pflags is not None:
                words += " " + flag_words(parent, pflags, xd=xd)
            if leaf != "pte":
                words += f" ({size >> 20} MiB)" if size < 1 << 30 else " (1 GiB)"
            cases.append((va, addrs, words))
            i += 1
    return Pair(t, features), cases


GROUPS = [
    ("32", "pte"), ("32", "pde"),
    ("pae", "pte"), ("pae", "pde"),
    ("4", "pte"), ("4", "pde"), ("4", "pdpte"),
    ("5", "pte"), ("5", "pde"), ("5", "pdpte"),
]


@pytest.mark.parametrize(("mode", "leaf"), GROUPS, ids=[f"{MODE_WORDS[m]}-{lf}" for m, lf in GROUPS])
def test_leaf_and_parent_rights(mode: str, leaf: str) -> None:
    pair, cases = build_leaf_parent(mode, leaf)
    failures, n = run_matrix(pair, cases, rights_envs(mode))
    assert n > 0
    assert not failures, report(failures, n)


CROSSES = [
    ("4", ("pdpte", "pde", "pte")),
    ("4", ("pml4e", "pdpte", "pde")),
    ("5", ("pml5e", "pml4e", "pdpte")),
    ("pae", ("pde", "pte")),
]


@pytest.mark.parametrize(("mode", "levels"), CROSSES, ids=[f"{MODE_WORDS[m]}-{'-'.join(lv)}" for m, lv in CROSSES])
def test_three_level_rights(mode: str, levels: tuple[str, ...]) -> None:
    """Every RW/US/XD combination of three levels at once (the others permissive), 4 KiB leaf."""
    names, shifts, _, _ = MODES[mode]
    t = Tables(mode)
    cases = []
    combos = rights_combos(True)
    for i, flags in enumerate(itertools.product(combos, repeat=len(levels))):
        va = 0x123
        for lvl, name in enumerate(names):
            va |= (combos.index(flags[levels.index(name)]) + 1 if name in levels else 1) << shifts[lvl]
        if mode == "pae":
            va &= 0xFFFF_FFFF
        upper = {name: f for name, f in zip(levels, flags, strict=True) if name != "pte"}
        leaf_flags = flags[levels.index("pte")] & ~P if "pte" in levels else RW | US
        addrs = t.put(va, upper, "pte", leaf_value(mode, "pte", 0x20_0000_0000 + i * 0x1000, leaf_flags))
        cases.append((va, addrs, " ".join(flag_words(n, f) for n, f in zip(levels, flags, strict=True))))
    failures, n = run_matrix(Pair(t), cases, rights_envs(mode))
    assert n >= len(cases) * 16 * 8
    assert not failures, report(failures, n)


@pytest.mark.parametrize("mode", ["32", "pae", "4", "5"], ids=MODE_WORDS.get)
def test_preset_accessed_and_dirty(mode: str) -> None:
    """Entries that already have A (and the leaf D) set: no writes for a read; D only when missing."""
    failures: list[str] = []
    n = 0
    leaves = ["pte", "pde"] + (["pdpte"] if mode in ("4", "5") else [])
    for leaf in leaves:
        for preset in (A, A | D):
            pair, cases = build_leaf_parent(mode, leaf, preset=preset)
            envs = [Env(mode, *cr_values(mode, wp=wp, nxe=True, smep=False, smap=False)) for wp in (False, True)]
            f, k = run_matrix(pair, cases, envs)
            failures += [f"preset {'A|D' if preset & D else 'A'}: {x}" for x in f]
            n += k
    assert not failures, report(failures, n)


# -- protection keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["4", "5"], ids=MODE_WORDS.get)
def test_protection_keys(mode: str) -> None:
    """PKE/PKS × the key's AD/WD bits × user/supervisor page × RW × access × CR0.WP × SMAP/AC.

    The other 15 keys of PKRU/PKRS are set to AD=1 so that reading the wrong key's bits shows."""
    t = Tables(mode)
    names, shifts, _, _ = MODES[mode]
    cases = []
    i = 0
    for leaf in ("pte", "pde"):
        li = names.index(leaf)
        for key in (0, 1, 15):
            for us in (0, US):
                for rw in (0, RW):
                    i += 1
                    va = (i << shifts[li]) | (1 << shifts[li - 1]) | 0x345
                    for lvl in range(li - 1):
                        va |= (2 if leaf == "pde" else 1) << shifts[lvl]
                    size = leaf_size(mode, leaf)
                    lv = leaf_value(mode, leaf, 0x40_0000_0000 + i * size, rw | us | (key << 59))
                    addrs = t.put(va, {}, leaf, lv)
                    cases.append((va, addrs, f"{leaf}.pk={key} {leaf}.rw={int(bool(rw))} {leaf}.us={int(bool(us))}"))
    pair = Pair(t)
    failures: list[str] = []
    n = 0
    for pke, pks, wp, smap in itertools.product((False, True), repeat=4):
        if not (pke or pks):
            continue
        for kbits in range(4):
            for key in (0, 1, 15):
                others = 0x5555_5555 & ~(3 << (2 * key))
                reg = others | (kbits << (2 * key))
                env = Env(mode, *cr_values(mode, wp=wp, nxe=True, smap=smap, pke=pke, pks=pks),
                          pkru=reg if pke else 0, pkrs=reg if pks else 0)
                sub = [c for c in cases if f".pk={key} " in c[2]]
                f, k = run_matrix(pair, sub, [env])
                failures += f
                n += k
    assert not failures, report(failures, n)


def test_pk_flag_reported_alongside_a_rights_violation() -> None:
    """SDM Vol. 3A §4.7 defines the PK error-code flag by the key alone: it is 1 when EFER.LMA=CR4.PKE=1,
    the access is a data access to a user-mode address with key i, and PKRU.ADi=1 (or WDi=1 for a write
    from user mode or with CR0.WP=1) — regardless of whether the ordinary rights also forbid the access.
    QEMU (``handle_mmu_fault``) and KVM (``permission_fault``) report it that way too.

    Case: 4-level, CR4.PKE=1, PKRU.WD1=1, user-mode write to a user page with RW=0 and key 1.
    Expected error code 0x27 (P|W|U|PK); a model that checks keys only after the rights gives 0x07."""
    t = Tables("4")
    va = 0x1000_0000_0000 | 0x1000
    t.put(va, {}, "pte", leaf_value("4", "pte", 0x5000, US | (1 << 59)))
    pair = Pair(t)
    pair.set(Env("4", *cr_values("4", nxe=True, pke=True), pkru=0b10 << 2))
    want = pair.reference(va, ref.WRITE, True, False, False)
    assert want.error_code == 0x27
    got = pair.mmu.probe(va, 1, user=True)
    assert got.outcome == PF
    assert got.error_code == 0x27, f"earlymm error code {got.error_code:#x}, SDM: 0x27 (P|W|U|PK)"


# -- reserved bits ----------------------------------------------------------------------------------


def reserved_bit_cases(mode: str, maxphyaddr: int) -> list[tuple[str, str, int, bool]]:
    """(level the bit is set in, leaf level, bit, NXE) for bits that are reserved, plus some that are not
    (bits 62:52 of IA-32e entries, bits 11:9, bit 8 and 6 of non-leaf entries) as controls."""
    m = maxphyaddr
    out: list[tuple[str, str, int, bool]] = []
    if mode == "32":
        for b in (21, 13, 20):
            out.append(("pde", "pde", b, False))
        for b in (9, 10, 11, 6, 8):  # ignored bits of a PDE that references a PT
            out.append(("pde", "pte", b, False))
        return out
    names = MODES[mode][0]
    hi_top = 62 if mode == "pae" else 51
    for name in names:
        if mode == "pae" and name == "pdpte":
            continue  # PDPTE register checks happen at the CR3 load: see test_tlb.py
        leaves = ["pte"]
        if name == "pde":
            leaves = ["pte", "pde"]
        if name == "pdpte":
            leaves = ["pte", "pdpte"]
        for leaf in leaves:
            if names.index(leaf) < names.index(name):
                continue
            for b in sorted({m, hi_top, (m + hi_top) // 2}):
                if b < 52 or mode == "pae":
                    out.append((name, leaf, b, True))
            out.append((name, leaf, 63, False))  # XD with NXE=0
            out.append((name, leaf, 63, True))  # XD with NXE=1: not reserved
            if mode != "pae":
                out.append((name, leaf, 55, True))  # bits 62:52 are ignored in IA-32e entries
            out.append((name, leaf, 10, True))  # software-available bit
            if name == leaf and name in ("pde", "pdpte"):
                for b in (13, 20) + ((21, 29) if name == "pdpte" else ()):
                    out.append((name, leaf, b, True))
                out.append((name, leaf, 12, True))  # PAT of a large page: not reserved
            if name in ("pml5e", "pml4e"):
                out.append((name, leaf, 7, True))  # PS in PML5E/PML4E
    return out


@pytest.mark.parametrize(("mode", "maxphyaddr"), [("32", 52), ("32", 36), ("pae", 36), ("pae", 52), ("4", 40),
                                                  ("4", 46), ("5", 52), ("5", 40)])
def test_reserved_bits(mode: str, maxphyaddr: int) -> None:
    failures: list[str] = []
    n = 0
    features = Features(maxphyaddr=maxphyaddr)
    for name, leaf, b, nxe in reserved_bit_cases(mode, maxphyaddr):
        t = Tables(mode, maxphyaddr)
        names, shifts, _, _ = MODES[mode]
        va = 0
        for lvl in range(names.index(leaf) + 1):
            va |= 3 << shifts[lvl]
        va &= 0xFFFF_FFFF if mode in ("32", "pae") else (1 << 47) - 1
        size = leaf_size(mode, leaf)
        va = (va & ~(size - 1)) | (0x5A5 & (size - 1))
        pa = 0x3 << 30
        upper = {}
        if name != leaf:
            base = P | RW | US if not (mode == "pae" and name == "pdpte") else P
            upper[name] = base | (1 << b)
        lv = leaf_value(mode, leaf, pa, RW | US | ((1 << b) if name == leaf else 0))
        addrs = t.put(va, upper, leaf, lv)
        pair = Pair(t, features)
        env = Env(mode, *cr_values(mode, nxe=nxe))
        f, k = run_matrix(pair, [(va, addrs, f"{name} bit {b} ({'leaf ' + leaf})")], [env])
        failures += [f"maxphyaddr={maxphyaddr} {x}" for x in f]
        n += k
    assert n > 0
    assert not failures, report(failures, n)


@pytest.mark.parametrize("mode", ["32", "pae", "4", "5"], ids=MODE_WORDS.get)
def test_rsvd_fault_sets_present_bit(mode: str) -> None:
    """Every reserved-bit #PF reports P=1 with RSVD=1 (SDM §4.7: RSVD faults are protection faults)."""
    seen = 0
    for name, leaf, b, nxe in reserved_bit_cases(mode, 40):
        t = Tables(mode, 40)
        names, shifts, _, _ = MODES[mode]
        va = 0
        for lvl in range(names.index(leaf) + 1):
            va |= 5 << shifts[lvl]
        va &= 0xFFFF_FFFF if mode in ("32", "pae") else (1 << 47) - 1
        va &= ~(leaf_size(mode, leaf) - 1)
        upper = {name: (P if mode == "pae" and name == "pdpte" else P | RW | US) | (1 << b)} if name != leaf else {}
        t.put(va, upper, leaf, leaf_value(mode, leaf, 0, RW | US | ((1 << b) if name == leaf else 0)))
        pair = Pair(t, Features(maxphyaddr=40))
        pair.set(Env(mode, *cr_values(mode, nxe=nxe)))
        for kind in (0, 1, 2):
            r = pair.mmu.probe(va, kind)
            if r.outcome == PF and r.error_code & 8:
                seen += 1
                assert r.error_code & 1, f"{name} bit {b}: RSVD without P (error code {r.error_code:#x})"
    assert seen > 0


def test_gbpage_without_cpu_support_is_reserved() -> None:
    """PDPTE.PS=1 on a CPU without 1 GiB pages: RSVD #PF (SDM §4.5.4)."""
    t = Tables("4")
    va = 0x40_0000_0000 | 0x40_0000 | 0x123
    addrs = t.put(va, {}, "pdpte", leaf_value("4", "pdpte", 0x4000_0000, RW))
    pair = Pair(t, Features(gbpages=False))
    failures, n = run_matrix(pair, [(va, addrs, "pdpte.ps=1 (no gbpages)")],
                             [Env("4", *cr_values("4", nxe=nx)) for nx in (False, True)])
    assert not failures, report(failures, n)
    pair.set(Env("4", *cr_values("4")))
    r = pair.mmu.probe(va)
    assert r.outcome == PF and r.error_code == 0x9


def test_pse36_without_cpu_support() -> None:
    """32-bit 4 MiB page with bits 20:13 set on a CPU without PSE-36: those bits are reserved."""
    t = Tables("32")
    va = 0x4000_0000 | 0x123
    addrs = t.put(va, {}, "pde", leaf_value("32", "pde", 0x1_0040_0000, RW))
    pair = Pair(t, Features(pse36=False))
    failures, n = run_matrix(pair, [(va, addrs, "pde.ps=1 pde bit 13 (no pse36)")],
                             [Env("32", *cr_values("32"))])
    assert not failures, report(failures, n)


def test_32bit_pse_off_ignores_ps() -> None:
    """CR4.PSE=0: PS of a 32-bit PDE is ignored and the PDE references a page table."""
    t = Tables("32")
    va = 0x0040_3123
    pt = t.alloc()
    pde_addr = t.root + ((va >> 22) & 0x3FF) * 4
    t.mem.write_u32(pde_addr, pt | P | RW | US | PS)
    t.mem.write_u32(pt + 3 * 4, 0x7777_7000 | P | RW | US)
    pair = Pair(t)
    failures, n = run_matrix(pair, [(va, [pde_addr, pt + 12], "pde.ps=1 (cr4.pse=0)")],
                             [Env("32", *cr_values("32", pse=False))])
    assert not failures, report(failures, n)
    pair.set(Env("32", *cr_values("32", pse=False)))
    assert pair.mmu.probe(va).pa == 0x7777_7123


# -- named regressions ------------------------------------------------------------------------------


def test_legacy_2level_paging_is_not_disabled() -> None:
    """QEMU #2654: with CR0.PG=1 and CR4.PAE=0, 32-bit (2-level) paging is active — it must not be
    treated as "paging off" (linear == physical). Checked both through a Cpu and a bare Mmu."""
    mem = PhysMem()
    pd, pt = 0x1000, 0x2000
    mem.write_u32(pd + (0x0040_0000 >> 22) * 4, pt | P | RW)
    mem.write_u32(pt + 5 * 4, 0x0077_7000 | P | RW)
    cpu = Cpu(mem, Features())
    cpu.write_cr3(pd)
    cpu.write_cr0(cpu.regs.cr0 | ref.CR0_PE | ref.CR0_PG)
    assert cpu.paging.value == "32-bit"
    r = cpu.mmu.translate(0x0040_5ABC)
    assert r.outcome == OK and r.pa == 0x0077_7ABC
    miss = cpu.mmu.probe(0x0080_0000)  # PDE not present: #PF, not an identity mapping
    assert miss.outcome == PF and miss.error_code == 0
    assert mem.read_u32(pd + 4) & A and mem.read_u32(pt + 20) & A
    want = ref.translate(mem.read_int, ref.RefCpu(cpu.regs.cr0, pd, 0, 0), ref.RefAccess(0x0040_5ABC))
    assert want.pa == 0x0077_7ABC


def test_clean_page_write_rewalks_to_set_dirty() -> None:
    """A read fills the TLB from a PTE with D=0; a later write must not be served from that entry, but
    walk again and set D in memory (SDM §4.8; QEMU maps such pages read-only in its TLB)."""
    t = Tables("4")
    mem = t.mem
    regs = ControlRegs()
    mmu = Mmu(mem, regs, Features(), Tlb())
    va = 0x7F00_0000_1000
    addrs = t.put(va, {}, "pte", leaf_value("4", "pte", 0x9000, RW))
    regs.cr0, regs.cr4, regs.efer = cr_values("4", nxe=True)
    regs.cr3 = t.root
    mmu.reload()
    r = mmu.translate(va, 0)
    assert r.outcome == OK
    pte = mem.read_u64(addrs[-1])
    assert pte & A and not pte & D
    assert len(mmu.tlb) == 1
    hits = mmu.tlb.stats.hits
    r = mmu.translate(va, 0)
    assert mmu.tlb.stats.hits == hits + 1  # the read is served from the TLB
    w = mmu.translate(va | 8, 1)
    assert w.outcome == OK and w.pa == 0x9008
    assert mem.read_u64(addrs[-1]) & D, "write through a clean TLB entry did not set D in the PTE"
    assert mem.read_u64(addrs[-1]) == pte | D


def test_read_only_tlb_entry_rewalks_after_upgrade() -> None:
    """A write that the cached (read-only) rights forbid walks again; with the PTE made writable in
    memory the write succeeds (the CPU re-walks on a fault before delivering it; earlymm re-walks a TLB
    hit that forbids the access, as QEMU does)."""
    t = Tables("4")
    regs = ControlRegs()
    mmu = Mmu(t.mem, regs, Features(), Tlb())
    va = 0x1000_2000
    addrs = t.put(va, {}, "pte", leaf_value("4", "pte", 0xA000, 0))
    regs.cr0, regs.cr4, regs.efer = cr_values("4", wp=True)
    regs.cr3 = t.root
    mmu.reload()
    assert mmu.translate(va, 0).outcome == OK
    t.mem.write_u64(addrs[-1], t.mem.read_u64(addrs[-1]) | RW)
    assert mmu.translate(va, 1).outcome == OK


def test_xd_ignored_without_pae() -> None:
    """32-bit paging has no XD: a fetch is allowed even with EFER.NXE=1, and I/D is not reported."""
    t = Tables("32")
    va = 0x0C00_0000
    t.put(va, {}, "pte", leaf_value("32", "pte", 0x3000, 0))
    pair = Pair(t)
    env = Env("32", *cr_values("32", nxe=True))
    pair.set(env)
    assert pair.mmu.probe(va, 2).outcome == OK
    r = pair.mmu.probe(va + 0x40_0000, 2)  # PDE not present
    assert r.outcome == PF and r.error_code == 0, "I/D reported in 32-bit paging without SMEP"


def test_matrix_is_large_enough() -> None:
    """Guard against a pruning mistake that silently empties the matrix."""
    pair, cases = build_leaf_parent("4", "pte")
    assert len(cases) == 64
    _, n = run_matrix(pair, cases[:1], rights_envs("4"), check_translate=False)
    assert n == 16 * 8 + 8 * 5  # 8 accesses per env, plus AC=1 for 5 of them where SMAP is on
