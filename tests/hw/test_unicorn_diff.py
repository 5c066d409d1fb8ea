"""Differential tests: earlymm (and tests/reference.py) against Unicorn 2.1.x, i.e. QEMU 5.0's MMU.

Random page-table forests (tests/hw/forest.py) in 4- and 5-level paging, MAXPHYADDR 40 on both sides,
CPU model Icelake-Server, ring-0 and ring-3 accesses (a real ``iretq`` to CPL 3), read / write /
fetch, random CR0.WP, EFER.NXE, CR4.SMEP/SMAP, EFLAGS.AC and (in the keyed runs) CR4.PKE with a random
PKRU. Per access the tests compare: fault or not, the vector (14/13), CR2, the #PF error code (dug out
of Unicorn's context blob), the physical address reached (memory hooks), and every byte of the table
pool afterwards — i.e. all A/D writes, including those on faulting walks.

Known QEMU behaviour that is not architectural, each handled by name and nowhere else:

* ``QEMU_1G_LEAF_ACCESSED_EARLY``: QEMU 5.0 sets A in a 1 GiB PDPTE leaf *before* checking its
  large-page reserved bits (29:13), its rights and its protection key, so a walk that faults there
  still marks it accessed. A faulting 1 GiB leaf is therefore expected to gain A in Unicorn only.
* ``QEMU_NONCANONICAL_JUMP_RETIRES``: ``jmp`` to a non-canonical address raises #GP on the fetch at
  the target, after the jump retired (hardware faults on the jump). Only RIP differs, and RIP is not
  compared.
* ``QEMU64_SMAP_IGNORED``: the qemu64 model does not enforce SMAP (CR4.SMAP reads back set), and
  ``QEMU_GBPAGES_ALWAYS``: QEMU maps PDPTE.PS=1 as 1 GiB even on models without pdpe1gb. Both are
  avoided by using Icelake-Server (SMAP enforced, 1 GiB pages advertised, earlymm Features(gbpages=True)).

Each quirk has a test below that shows it directly, so a Unicorn upgrade that changes it is noticed.

Not compared (no way to provoke them in this harness): implicit supervisor accesses, CR4.PKS (QEMU 5.0
has no PKS), 32-bit and PAE paging (PAE in QEMU 5.0 re-reads PDPTEs from memory on every walk instead of
using PDPTE registers — see test_tlb.py for the register behaviour).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

pytest.importorskip("unicorn")

from earlymm.arch.modes import Features
from earlymm.hw.mmu import Mmu
from earlymm.hw.regs import ControlRegs
from earlymm.hw.tlb import Tlb
from earlymm.hw.walk import GP, OK, WalkResult
from tests import reference as ref
from tests.hw.forest import make_forest
from tests.hw.unicorn_support import (
    compare_outcome,
    load_model_memory,
    outcome_key,
    pool_diff,
    qemu_1g_leaf_accessed_early,
)
from tests.unicorn_harness import (
    CODE,
    CR2_SENTINEL,
    HARNESS_INDEX,
    HARNESS_PA,
    HARNESS_SIZE,
    MAXPHYADDR,
    UnicornMmu,
    control_registers,
    harness_frames,
    harness_root_entry,
)

POOL_BASE = 0x10_0000
POOL_FRAMES = 16
KIND = ("read", "write", "exec")


@pytest.fixture(scope="module")
def unicorn() -> UnicornMmu:
    return UnicornMmu(POOL_BASE, POOL_FRAMES)


# -- one forest ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    compared: int = 0
    skipped: int = 0
    quirk_1g: int = 0
    stores_into_mapped: int = 0  # stores that landed in table/harness frames (aliasing)
    by_outcome: dict[str, int] = field(default_factory=dict)
    model_failures: list[str] = field(default_factory=list)
    reference_failures: list[str] = field(default_factory=list)


def run_forest(um: UnicornMmu, seed: int, mode: str, *, n_vas: int, n_env: int, keys: bool,
               tally: Tally) -> None:
    rng = random.Random(seed * 7919 + (5 if mode == "5" else 4))
    forest = make_forest(seed, mode, n_vas=n_vas, maxphyaddr=MAXPHYADDR, pool_base=POOL_BASE,
                         pool_frames=POOL_FRAMES, leaf_avoid=((HARNESS_PA, HARNESS_PA + HARNESS_SIZE),),
                         root_entries={HARNESS_INDEX: harness_root_entry(mode)},
                         top_index_avoid=frozenset({HARNESS_INDEX}))
    pristine = b"".join(bytes(forest.frames[POOL_BASE + 0x1000 * i]) for i in range(POOL_FRAMES))
    um.write_pool(pristine)
    mem = load_model_memory(forest.frames)
    pool_pfns = [(POOL_BASE >> 12) + i for i in range(POOL_FRAMES)]
    regs = ControlRegs()
    mmu = Mmu(mem, regs, Features(maxphyaddr=MAXPHYADDR), Tlb(enabled=False))
    for _ in range(n_env):
        wp, nxe, smep, smap = (rng.random() < 0.5 for _ in range(4))
        pke = keys and rng.random() < 0.6
        pkru = rng.getrandbits(32) & rng.getrandbits(32) if pke else 0
        cr0, cr4, efer = control_registers(mode, wp=wp, nxe=nxe, smep=smep, smap=smap, pke=pke)
        regs.cr0, regs.cr4, regs.efer, regs.cr3, regs.pkru = cr0, cr4, efer, forest.root, pkru
        mmu.reload()
        rcpu = ref.RefCpu(cr0, forest.root, cr4, efer, maxphyaddr=MAXPHYADDR, pkru=pkru)
        for va in forest.vas:
            for kind in (0, 1, 2):
                for user in (False, True):
                    ac = not user and rng.random() < 0.5
                    name = (f"seed={seed} {mode}-level va={va:#x} {'user' if user else 'supervisor'} {KIND[kind]}"
                            f" cr0.wp={int(wp)} efer.nxe={int(nxe)} cr4.smep={int(smep)} cr4.smap={int(smap)}"
                            f" eflags.ac={int(ac)}" + (f" pkru={pkru:#x}" if pke else ""))
                    want = ref.translate(mem.read_int, rcpu, ref.RefAccess(va, kind, user, False, ac))
                    got = mmu.probe(va, kind, user, False, ac)
                    if got.outcome == OK and kind == 2 and (got.pa & ~0xFFF) == HARNESS_PA + CODE:
                        tally.skipped += 1  # would execute harness code
                        continue
                    mmu.translate(va, kind, user, False, ac)
                    model_pool = b"".join(bytes(mem.frames[p]) for p in pool_pfns)
                    ref_pool = bytearray(pristine)
                    for addr, (size, value) in want.ad.items():
                        if POOL_BASE <= addr < POOL_BASE + len(pristine):
                            ref_pool[addr - POOL_BASE:addr - POOL_BASE + size] = value.to_bytes(size, "little")
                    al = 0x5A
                    if got.outcome == OK and kind == 1 and mem.frames.get(got.pa >> 12) is not None:
                        al = mem.read_u8(got.pa)  # store the byte that is already there
                    pk = pkru if pke else None
                    u = um.access(cr0=cr0, cr4=cr4, efer=efer, cr3=forest.root, va=va, kind=kind, user=user,
                                  ac=ac, pkru=pk, al=al)
                    uc_pool = um.read_pool()
                    # The named quirk: QEMU marks a faulting 1 GiB leaf accessed.
                    quirk = qemu_1g_leaf_accessed_early(mode, got, nxe)
                    model_want, ref_want = bytearray(model_pool), ref_pool
                    if quirk is not None and POOL_BASE <= quirk < POOL_BASE + len(pristine):
                        tally.quirk_1g += 1
                        for buf in (model_want, ref_want):
                            off = quirk - POOL_BASE
                            buf[off] |= ref.BIT_A
                    tally.compared += 1
                    key = outcome_key(u)
                    tally.by_outcome[key] = tally.by_outcome.get(key, 0) + 1
                    problems = [
                        compare_outcome(u, got.outcome, got.pa, got.error_code, va),
                        pool_diff(uc_pool, bytes(model_want), POOL_BASE),
                    ]
                    before_store = um.written_byte_before_store
                    if kind == 1 and u.vector is None and before_store is not None:
                        tally.stores_into_mapped += 1
                        if before_store != al:
                            problems.append(f"byte at the store target was {before_store:#x} "
                                            f"before the store, earlymm has {al:#x}")
                    msg = "; ".join(p for p in problems if p)
                    if msg:
                        tally.model_failures.append(f"{name}: earlymm {describe_model(got)}: {msg}")
                    rproblems = [
                        compare_outcome(u, want.outcome, want.pa, want.error_code, va),
                        pool_diff(uc_pool, bytes(ref_want), POOL_BASE),
                    ]
                    rmsg = "; ".join(p for p in rproblems if p)
                    if rmsg:
                        tally.reference_failures.append(f"{name}: reference: {rmsg}")
                    # Restore both sides.
                    if uc_pool != pristine:
                        um.write_pool(pristine)
                    for i, p in enumerate(pool_pfns):
                        f = mem.frames[p]
                        chunk = pristine[i * 0x1000:(i + 1) * 0x1000]
                        if f != chunk:
                            f[:] = chunk


def describe_model(r: WalkResult) -> str:
    if r.outcome == OK:
        return f"ok pa={r.pa:#x}"
    if r.outcome == GP:
        return "#GP"
    return f"#PF err={r.error_code:#x} ({r.reason.value if r.reason else '?'})"


def run_many(um: UnicornMmu, seeds: range, *, n_vas: int, n_env: int, keys: bool) -> Tally:
    tally = Tally()
    for seed in seeds:
        for mode in ("4", "5"):
            run_forest(um, seed, mode, n_vas=n_vas, n_env=n_env, keys=keys, tally=tally)
    return tally


def summary(t: Tally, failures: list[str]) -> str:
    head = (f"{len(failures)} of {t.compared} accesses disagree with Unicorn "
            f"(outcomes {dict(sorted(t.by_outcome.items()))}, 1 GiB quirk applied {t.quirk_1g}x, "
            f"{t.skipped} skipped):\n  ")
    return head + "\n  ".join(failures[:20])


def check_harness_untouched(um: UnicornMmu) -> None:
    for pa, data in harness_frames().items():
        if pa == HARNESS_PA + 0x2000 or pa == HARNESS_PA + 0x3000:
            continue  # QEMU set descriptor A bits in the GDT and iretq's frame is on the stack
        assert um.read(pa, 0x1000) == data, f"harness frame {pa:#x} changed"


# -- the tests ---------------------------------------------------------------------------------------


def test_earlymm_matches_unicorn_without_keys(unicorn: UnicornMmu) -> None:
    """CR4.PKE=0: earlymm must agree with QEMU on every access (13 000+ accesses)."""
    t = run_many(unicorn, range(20), n_vas=14, n_env=4, keys=False)
    check_harness_untouched(unicorn)
    assert t.compared > 13_000
    assert len(t.by_outcome) >= 4, t.by_outcome  # ok, #PF np, #PF prot, #PF rsvd (+ #GP)
    assert not t.model_failures, summary(t, t.model_failures)


def test_reference_matches_unicorn_with_keys(unicorn: UnicornMmu) -> None:
    """The reference against QEMU, CR4.PKE and a random PKRU included: validates the reference."""
    t = run_many(unicorn, range(100, 120), n_vas=14, n_env=4, keys=True)
    assert t.compared > 13_000
    assert not t.reference_failures, summary(t, t.reference_failures)


def test_earlymm_matches_unicorn_with_keys(unicorn: UnicornMmu) -> None:
    """Keys on: fails while earlymm omits the PK error-code bit when the rights also forbid the access
    (see test_rights_matrix.test_pk_flag_reported_alongside_a_rights_violation)."""
    t = run_many(unicorn, range(100, 120), n_vas=14, n_env=4, keys=True)
    assert not t.model_failures, summary(t, t.model_failures)


@pytest.mark.slow
@pytest.mark.parametrize("keys", [False, True])
def test_earlymm_matches_unicorn_long(unicorn: UnicornMmu, keys: bool) -> None:
    t = run_many(unicorn, range(1000, 1200), n_vas=24, n_env=6, keys=keys)
    check_harness_untouched(unicorn)
    assert not t.reference_failures, summary(t, t.reference_failures)
    assert not t.model_failures, summary(t, t.model_failures)


# -- the quirks themselves, so that a Unicorn upgrade that changes them is noticed ----------------------


def _one_forest(um: UnicornMmu, mode: str, entries: dict[int, int]) -> int:
    pool = bytearray(POOL_FRAMES * 0x1000)
    root = POOL_BASE
    for addr, value in {root + 8 * HARNESS_INDEX: harness_root_entry(mode), **entries}.items():
        pool[addr - POOL_BASE:addr - POOL_BASE + 8] = value.to_bytes(8, "little")
    um.write_pool(bytes(pool))
    return root


def test_quirk_qemu_marks_faulting_1g_leaf_accessed(unicorn: UnicornMmu) -> None:
    """QEMU_1G_LEAF_ACCESSED_EARLY, shown directly: a user read of a supervisor 1 GiB page faults, and
    QEMU has set A in the PDPTE; a 2 MiB leaf in the same situation is left alone (and earlymm leaves
    both alone)."""
    pdpt, pd = POOL_BASE + 0x1000, POOL_BASE + 0x2000
    root = _one_forest(unicorn, "4", {
        POOL_BASE: pdpt | 0x7,  # PML4E[0]
        pdpt: 0x4000_0000 | 0x83,  # PDPTE[0]: 1 GiB supervisor leaf, A=0
        pdpt + 8: pd | 0x7,  # PDPTE[1]
        pd: 0x20_0000 | 0x83,  # PDE[0] under it: 2 MiB supervisor leaf, A=0
    })
    cr0, cr4, efer = control_registers("4", wp=False, nxe=True, smep=False, smap=False, pke=False)
    u = unicorn.access(cr0=cr0, cr4=cr4, efer=efer, cr3=root, va=0x1234, kind=0, user=True)
    assert (u.vector, u.error_code) == (14, 0x5)
    assert int.from_bytes(unicorn.read(pdpt, 8), "little") & ref.BIT_A, "quirk gone: update the diff test"
    u = unicorn.access(cr0=cr0, cr4=cr4, efer=efer, cr3=root, va=0x4000_1234, kind=0, user=True)
    assert (u.vector, u.error_code) == (14, 0x5)
    assert not int.from_bytes(unicorn.read(pd, 8), "little") & ref.BIT_A


def test_unicorn_icelake_enforces_smap(unicorn: UnicornMmu) -> None:
    """The oracle must enforce SMAP for the SMAP cases to mean anything (qemu64/haswell do not)."""
    pdpt = POOL_BASE + 0x1000
    root = _one_forest(unicorn, "4", {POOL_BASE: pdpt | 0x7, pdpt: 0x4000_0000 | 0xA7})
    cr0, cr4, efer = control_registers("4", wp=False, nxe=True, smep=False, smap=True, pke=False)
    u = unicorn.access(cr0=cr0, cr4=cr4, efer=efer, cr3=root, va=0x10, kind=0, user=False, ac=False)
    assert (u.vector, u.error_code) == (14, 0x1)
    u = unicorn.access(cr0=cr0, cr4=cr4, efer=efer, cr3=root, va=0x10, kind=0, user=False, ac=True)
    assert u.vector is None and u.pa == 0x4000_0010


def test_quirk_noncanonical_jump_faults_at_the_target(unicorn: UnicornMmu) -> None:
    """QEMU_NONCANONICAL_JUMP_RETIRES: ``jmp rdi`` with a non-canonical RDI raises #GP(0) with RIP
    already at the target (hardware: RIP of the jmp). Vector, error code and CR2 agree; RIP is not
    compared anywhere."""
    root = _one_forest(unicorn, "4", {})
    cr0, cr4, efer = control_registers("4", wp=False, nxe=True, smep=False, smap=False, pke=False)
    target = 0x8000_0000_1000
    u = unicorn.access(cr0=cr0, cr4=cr4, efer=efer, cr3=root, va=target, kind=2, user=False)
    assert (u.vector, u.error_code, u.cr2) == (13, 0, CR2_SENTINEL)
    assert u.fault_rip == target, "quirk gone: the jump now faults on itself"


@pytest.fixture(scope="module")
def unicorn_qemu64() -> UnicornMmu:
    from unicorn.x86_const import UC_CPU_X86_QEMU64

    return UnicornMmu(POOL_BASE, POOL_FRAMES, cpu_model=UC_CPU_X86_QEMU64)


def test_quirk_qemu64_does_not_enforce_smap(unicorn_qemu64: UnicornMmu) -> None:
    """QEMU64_SMAP_IGNORED: on the qemu64 model a supervisor read of a user page with CR4.SMAP=1 and
    EFLAGS.AC=0 succeeds, which is why the differential tests use Icelake-Server."""
    pdpt = POOL_BASE + 0x1000
    root = _one_forest(unicorn_qemu64, "4", {POOL_BASE: pdpt | 0x7, pdpt: 0x4000_0000 | 0xA7})
    cr0, cr4, efer = control_registers("4", wp=False, nxe=True, smep=False, smap=True, pke=False)
    u = unicorn_qemu64.access(cr0=cr0, cr4=cr4, efer=efer, cr3=root, va=0x10, kind=0, user=False, ac=False)
    assert u.vector is None and u.pa == 0x4000_0010, "quirk gone: qemu64 now enforces SMAP"


def test_quirk_gbpages_accepted_without_cpuid(unicorn_qemu64: UnicornMmu) -> None:
    """QEMU_GBPAGES_ALWAYS: qemu64 does not advertise 1 GiB pages, yet QEMU maps a PDPTE with PS=1 as a
    1 GiB page instead of raising a reserved-bit #PF (earlymm with Features(gbpages=False) faults)."""
    pdpt = POOL_BASE + 0x1000
    root = _one_forest(unicorn_qemu64, "4", {POOL_BASE: pdpt | 0x7, pdpt: 0x4000_0000 | 0xA3})
    cr0, cr4, efer = control_registers("4", wp=False, nxe=True, smep=False, smap=False, pke=False)
    u = unicorn_qemu64.access(cr0=cr0, cr4=cr4, efer=efer, cr3=root, va=0x1234_5678, kind=0, user=False)
    assert u.vector is None and u.pa == 0x4000_0000 + 0x1234_5678, "quirk gone: QEMU now checks pdpe1gb"
