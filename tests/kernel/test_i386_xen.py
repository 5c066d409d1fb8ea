"""The i386 Xen PV path (issue 13 item 3; spec §5.6, §5.1): 2.6.23's xen_pagetable_setup_start/_done on the
2.6.21 builders, under a 32-bit Xen 3.1 that validates every update.

Expected values come from the sources, not from the model: the start hook's memcpy of Xen's top level and
(PAE) ``set_pgd(&base[i], __pgd(1 + __pa(pmd)))`` through ``xen_make_pgd`` (arch/i386/xen/enlighten.c,
mmu.c @ 2.6.23); ``__PAGE_KERNEL`` without _PAGE_GLOBAL = 0x063 (Xen hides PGE) and ``mask_rw_pte``;
FIX_PARAVIRT_BOOTMAP = 176 in 2.6.2x's fixmap enum for the reference configuration, below
``__FIXADDR_TOP = -(−HYPERVISOR_VIRT_START + 2 pages) − PAGE_SIZE`` (``reserve_top_address``); pinning
of a level the hypervisor lacks ignored (xen/arch/x86/mm.c ``pin_page``); "PAE L3 3rd slot is shared"
(``create_pae_xen_mappings``). The saved cores are walked by tests/reference.py and checked through the
domain's p2m.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest

from earlymm.arch.addr import VirtAddr
from earlymm.hw.faults import Halt
from earlymm.images import open_image
from earlymm.kernel.i386.boot import I386BootResult, boot
from earlymm.kernel.i386.consts import V2621
from earlymm.kernel.i386.context import I386Config
from earlymm.kernel.i386.events import TablePage
from earlymm.kernel.phases import Phase
from earlymm.platform.xen.consts import MmuExt
from earlymm.platform.xen.domain32 import Domain32Config, Xen32PvPlatform
from earlymm.platform.xen.events import Hypercall
from earlymm.tools.boot_report_i386 import save_core
from tests import reference as ref

PAGE_OFFSET = 0xC000_0000
HVS = {False: 0xFC00_0000, True: 0xF580_0000}  # HYPERVISOR_VIRT_START, public/arch-x86/xen-x86_32.h
FIX_PARAVIRT_BOOTMAP = 3 + 64 + 13 * 8 + 4 + 1  # HOLE VDSO APIC, IO-APICs, KMAP × NR_CPUS, ACPI, PCIE_MCFG
PAGE_KERNEL = 0x063  # P RW A D: __PAGE_KERNEL, no _PAGE_GLOBAL without PGE
MEM = 64 << 20


def xboot(pae: bool, until: Phase | None = None) -> I386BootResult:
    return boot(Domain32Config(nr_pages=MEM >> 12), I386Config(V2621, pae=pae, pv="xen"), until=until, trace=True)


@pytest.fixture(scope="module", params=[False, True], ids=["2-level", "pae"])
def done(request: pytest.FixtureRequest) -> I386BootResult:
    return xboot(request.param)


@pytest.fixture(scope="module", params=[False, True], ids=["2-level", "pae"])
def started(request: pytest.FixtureRequest) -> I386BootResult:
    return xboot(request.param, Phase.PAGETABLE_SETUP_START)


def plat(r: I386BootResult) -> Xen32PvPlatform:
    p = r.ctx.platform
    assert isinstance(p, Xen32PvPlatform)
    return p


def mfn(r: I386BootResult, pa: int) -> int:
    return int(plat(r).p2m[pa >> 12])


def table(r: I386BootResult, machine_pa: int) -> list[int]:
    w = 8 if r.ctx.pae else 4
    data = r.ctx.platform.mem.read(machine_pa & ~0xFFF, 4096)
    return list(struct.unpack(f"<{4096 // w}{'Q' if w == 8 else 'I'}", data))


def phys(r: I386BootResult, name: str) -> int:
    return r.ctx.layout[name] - PAGE_OFFSET


def xen_first_slot(pae: bool) -> int:
    return (HVS[pae] >> 21) & 511 if pae else HVS[pae] >> 22


def test_start_hook_copies_xen_top_level_and_switches_cr3(started: I386BootResult) -> None:
    r, p = started, plat(started)
    pae = r.ctx.pae
    swapper = mfn(r, phys(r, "swapper_pg_dir")) << 12
    xen_top = mfn(r, p.sod.pt_base - PAGE_OFFSET) << 12
    mine, xens = table(r, swapper), table(r, xen_top)
    assert r.ctx.cpu.regs.cr3 == swapper and p.xen.kernel_root == swapper >> 12  # xen_write_cr3(__pa(base))
    if not pae:  # memcpy(base, xen_pgd, PTRS_PER_PGD * sizeof(pgd_t)): the guest slots are Xen's own entries
        assert mine[:xen_first_slot(False)] == xens[:xen_first_slot(False)]
        assert [i for i, e in enumerate(mine[:xen_first_slot(False)]) if e & 1] == [768, 769]
    else:  # entries 0..2 as Xen's (empty); entry 3 = make_pgd(1 + __pa(pmd)): the copy's mfn | P only
        assert mine[:3] == xens[:3] == [0, 0, 0]
        pmd_pa = 4 << 12  # bootmem's lowest free page: 0 BIOS, 1 SMP, 2 ACPI S3, 3 trampoline are taken
        assert mine[3] == (mfn(r, pmd_pa) << 12) | 1 and mine[3] != xens[3]
        copy, orig = table(r, mine[3]), table(r, xens[3])
        assert copy[:xen_first_slot(True)] == orig[:xen_first_slot(True)]  # the same L1 frames, 0 … 427
    for name in ("swapper_pg_dir", "empty_zero_page"):  # make_lowmem_page_readonly
        res = r.ctx.cpu.mmu.probe(r.ctx.layout[name])
        assert res.ok and not res.writable and res.pa == mfn(r, phys(r, name)) << 12


def test_start_hook_hypercalls_are_validated(started: I386BootResult) -> None:
    calls = [(e.name, e.detail.split()[0], e.rc) for e in started.ctx.trace.events if isinstance(e, Hypercall)]
    after_builder = calls[calls.index(("mmuext_op", "NEW_BASEPTR", 0)) + 1:]
    want = ["update_va_mapping"] * 2 + ["mmuext_op"]
    if started.ctx.pae:
        want = ["update_va_mapping", "mmu_update", *want]
    assert [c[0] for c in after_builder] == want and all(rc == 0 for *_x, rc in after_builder)
    assert after_builder[-1][1] == "NEW_BASEPTR"


def test_present_pages_kept_leaves_rewritten(done: I386BootResult) -> None:
    r, p = done, plat(done)
    builder_l1 = [mfn(r, pfn << 12) for pfn in p.sod.tables[1]]
    kept = [e.pa for e in r.ctx.trace.events if isinstance(e, TablePage) and e.action == "kept"
            and e.level == "pte"]
    assert [mfn(r, pa) for pa in kept] == builder_l1  # one_page_table_init found Xen's pte pages present
    tables = {mfn(r, pfn << 12) for pfns in p.sod.tables.values() for pfn in pfns}
    tables |= {mfn(r, phys(r, "swapper_pg_dir")), mfn(r, phys(r, "empty_zero_page"))}
    tables |= {mfn(r, e.pa) for e in r.ctx.trace.events if isinstance(e, TablePage) and e.action == "allocated"}
    n = 512 if r.ctx.pae else 1024
    for k, l1 in enumerate(builder_l1):
        for i, e in enumerate(table(r, l1 << 12)):
            pfn = k * n + i
            want_flags = PAGE_KERNEL & ~0x2 if mfn(r, pfn << 12) in tables else PAGE_KERNEL
            assert e == (mfn(r, pfn << 12) << 12) | want_flags, (k, i, hex(e))


def test_allocated_pte_pages_are_read_only_l1s(done: I386BootResult) -> None:
    r, xen = done, plat(done).xen
    new = [e.pa for e in r.ctx.trace.events if isinstance(e, TablePage) and e.action == "allocated"
           and e.level == "pte"]
    assert new and new[0] == (5 if r.ctx.pae else 4) << 12  # after the trampoline (and PAE's pmd copy)
    for pa in new:
        res = r.ctx.cpu.mmu.probe(PAGE_OFFSET + pa)
        assert res.ok and not res.writable and xen.types.level(mfn(r, pa)) == 1


def test_done_hook_maps_shared_info_and_pins(done: I386BootResult) -> None:
    r, xen = done, plat(done).xen
    top = HVS[r.ctx.pae] - 3 * 4096  # __FIXADDR_TOP after reserve_top_address
    va = top - FIX_PARAVIRT_BOOTMAP * 4096
    res = r.ctx.cpu.mmu.probe(va)
    assert res.ok and res.pa == xen.shared_info  # set_pte_mfn: <mfn, flags> stored as they are
    pte = r.ctx.platform.mem.read_int(res.entry_addr(r.ctx.cpu.mmu.plan, len(res.path) // 2 - 1), 8 if r.ctx.pae else 4)
    assert pte == xen.shared_info | PAGE_KERNEL
    pins = [e for e in r.ctx.trace.events if isinstance(e, Hypercall) and e.detail.startswith("PIN_L3_TABLE")]
    swapper = mfn(r, phys(r, "swapper_pg_dir"))
    assert [(e.detail, e.rc) for e in pins][-1] == (f"PIN_L3_TABLE {swapper:#x}", 0)
    assert xen.types.info(swapper).pinned == r.ctx.pae  # a 2-level Xen ignores PIN_L3_TABLE
    assert all(c.ok for c in r.checks), [c for c in r.checks if not c.ok]


def test_kernel_pte_pages_shared_by_both_pgds(started: I386BootResult) -> None:
    """Seed 002: all tables share the kernel's PTE pages — one update through the seam is seen through Xen's
    own table and through swapper_pg_dir without touching either."""
    r, p = started, plat(started)
    swapper = mfn(r, phys(r, "swapper_pg_dir")) << 12
    xen_top = mfn(r, p.sod.pt_base - PAGE_OFFSET) << 12
    va = PAGE_OFFSET + 0x30_0000  # a kernel page in the builder's map
    target_pfn = 0x3F00  # some other page of the domain
    ptep = r.ctx.pv.init.x.lookup_address(va)  # type: ignore[attr-defined]
    r.ctx.pv.mmu.set_pte(VirtAddr(ptep), r.ctx.pv.mmu.make_entry((target_pfn << 12) | PAGE_KERNEL))

    def read(addr: int, size: int) -> int:
        return r.ctx.platform.mem.read_int(addr, size)

    for root in (swapper, xen_top):
        rcpu = ref.RefCpu(cr0=r.ctx.cpu.regs.cr0, cr3=root, cr4=0x20 if r.ctx.pae else 0, efer=0, maxphyaddr=36)
        got = ref.translate(read, rcpu, ref.RefAccess(va))
        assert got.outcome == ref.OK and got.pa == mfn(r, target_pfn << 12) << 12


def test_read_only_mapping_never_made_writable() -> None:
    """xen_set_pte_init keeps a present read-only pte read-only; the later xen_set_pte does not, and Xen
    refuses a writable mapping of a page table (the guest BUGs)."""
    r = xboot(False, Phase.PAGETABLE_SETUP_START)
    ctx = r.ctx
    va = ctx.layout["swapper_pg_dir"]
    ptep = ctx.pv.init.x.lookup_address(va)  # type: ignore[attr-defined]
    rw = ctx.pv.mmu.make_entry((phys(r, "swapper_pg_dir")) | PAGE_KERNEL)
    ctx.pv.mmu.set_pte(VirtAddr(ptep), rw)
    assert not ctx.cpu.mmu.probe(va).writable
    ctx.pv.init.x.set_pte_init = False  # type: ignore[attr-defined]
    with pytest.raises(Halt, match="refused"):
        ctx.pv.mmu.set_pte(VirtAddr(ptep), rw)
    assert any("Bad type" in line for line in plat(r).xen.console)


def test_pae_l3_slot3_l2_cannot_be_shared() -> None:
    """Had the start hook linked Xen's own L2 instead of a copy, Xen would refuse the new base pointer."""
    r = xboot(True, Phase.SETUP_ARCH)
    p = plat(r)
    xen, mem = p.xen, r.ctx.platform.mem
    xen_l3 = mfn(r, p.sod.pt_base - PAGE_OFFSET)
    swapper = mfn(r, phys(r, "swapper_pg_dir"))
    mem.write(swapper << 12, mem.read(xen_l3 << 12, 32))
    r.ctx.pv.init.x.make_lowmem_page_readonly(r.ctx.layout["swapper_pg_dir"])  # type: ignore[attr-defined]
    assert xen.mmuext_op([(MmuExt.NEW_BASEPTR, swapper)]) != 0
    assert any("PAE L3 3rd slot is shared" in line for line in xen.console)


def test_saved_core_agrees_with_reference_walk_through_p2m(tmp_path: Path, done: I386BootResult) -> None:
    r, p = done, plat(done)
    core = tmp_path / "xen32.core"
    save_core(r, core)
    rng = random.Random(2623)
    vas = [PAGE_OFFSET + (pfn << 12) + rng.randrange(4096) for pfn in rng.sample(range(MEM >> 12), 400)]
    vas += [rng.randrange(1 << 32) for _ in range(400)] + [HVS[r.ctx.pae], 0, 0xFFFF_F000]
    with open_image(core) as img:
        cpu0 = img.cpus[0]
        assert cpu0.cr3 == r.ctx.cpu.regs.cr3

        def read(addr: int, size: int) -> int:
            frame = img.frame(addr >> 12)
            data = bytes(frame) if frame is not None else bytes(4096)
            return int.from_bytes(data[addr & 0xFFF:(addr & 0xFFF) + size], "little")

        rcpu = ref.RefCpu(cr0=cpu0.cr0, cr3=cpu0.cr3, cr4=cpu0.cr4, efer=0, maxphyaddr=36,
                          gbpages=False)
        for va in vas:
            want = ref.translate(read, rcpu, ref.RefAccess(va))
            live = r.ctx.cpu.mmu.probe(va)
            assert (want.outcome == ref.OK) == live.ok, hex(va)
            if PAGE_OFFSET <= va < PAGE_OFFSET + MEM:
                pfn = (va - PAGE_OFFSET) >> 12
                assert want.outcome == ref.OK and want.pa == (int(p.p2m[pfn]) << 12) | (va & 0xFFF), hex(va)
            if want.outcome == ref.OK:
                assert want.pa == live.pa, hex(va)
    assert np.unique(p.p2m).size == p.p2m.size


def test_pae_l3_entry_with_rw_is_refused() -> None:
    """A PAE PDPTE's bits 2:1 are reserved (spec §1.3): Xen refuses an L3 entry with RW (L3_DISALLOW_MASK)."""
    r = xboot(True, Phase.SETUP_ARCH)
    p = plat(r)
    xen = p.xen
    l3 = mfn(r, p.sod.pt_base - PAGE_OFFSET)
    target = mfn(r, 0x40_0000)  # a data page of the domain
    rc, done_ = xen.mmu_update([((l3 << 12) + 8 * 1, (target << 12) | 0x3)])
    assert rc != 0 and done_ == 0 and any("Bad L3 flags 2" in line for line in xen.console)
    assert r.ctx.platform.mem.read_u64((l3 << 12) + 8) == 0


def test_ptwr_emulates_a_pae_guests_two_word_pte_store() -> None:
    """A direct store into a read-only L1 page traps to Xen, which validates and performs it
    (``ptwr_emulated_update``): a 4-byte store is merged with the rest of the 8-byte PAE entry, so the
    high-then-low pair of a PAE ``set_pte`` ends as the new entry; a store making a writable mapping of a
    page table is not emulated — the fault reaches the guest (here: no handler, the domain crashes)."""
    r = xboot(True, Phase.PAGETABLE_SETUP_START)
    ctx, xen = r.ctx, plat(r).xen
    va = PAGE_OFFSET + 0x30_0000
    ptep = ctx.pv.init.x.lookup_address(va)  # type: ignore[attr-defined]
    new = (mfn(r, 0x3F00 << 12) << 12) | PAGE_KERNEL
    ctx.cpu.store(ptep + 4, 4, new >> 32)
    ctx.cpu.store(ptep, 4, new & 0xFFFF_FFFF)
    assert ctx.platform.mem.read_u64(ctx.cpu.mmu.probe(ptep).pa) == new
    assert ctx.cpu.mmu.probe(va).pa == new & ~0xFFF
    swapper_pte = ctx.pv.init.x.lookup_address(ctx.layout["swapper_pg_dir"])  # type: ignore[attr-defined]
    bad = (mfn(r, phys(r, "swapper_pg_dir")) << 12) | PAGE_KERNEL
    with pytest.raises(Exception, match="crashed domain"):
        ctx.cpu.store(swapper_pte, 4, bad & 0xFFFF_FFFF)
    assert any("Bad type" in line for line in xen.console)
