"""phys_pte_init / phys_pmd_init / phys_pud_init on tables that already hold entries: what a native boot
never shows (the tables it fills start empty) but Xen, a memory hotplug and the source's own comments are
about — present entries reused, large pages kept or split with their protection, entries past ``end``
cleared only where e820 has no RAM.

Each case runs the model's builder on a scratch table page of a booted machine (CR3 on the final direct
map, so nothing faults) and checks the result entry by entry against arch/x86/mm/init_64.c (v3.9 and 6.1
agree on all of it):

* past ``end``: ``if (!after_bootmem && !e820_any_mapped(addr & MASK, next, E820_RAM) && …) set_xxx(…, 0)``;
* a present PTE is kept ('Xen may have set it up, e.g. read-only page tables');
* a present table entry is descended into; a present large page is kept where that size is allowed, else
  split: ``new_prot = pte_pgprot(pte_clrhuge(*(pte_t *)pmd))`` (PSE dropped, every other bit kept, then
  masked by ``__supported_pte_mask``), the new table linked with ``pmd_populate_kernel``/``pud_populate``
  (``_PAGE_TABLE``);
* an empty entry becomes a 2 MiB leaf ``prot | _PAGE_PSE`` (``PAGE_KERNEL_LARGE`` for 1 GiB) where allowed,
  else a new lower table.
"""

from __future__ import annotations

import numpy as np
import pytest

from earlymm.hw.memory import Region, RegionType
from earlymm.kernel.consts import __PAGE_KERNEL
from earlymm.kernel.context import KernelContext
from earlymm.kernel.init_64 import PG_LEVEL_1G, PG_LEVEL_2M, pfn_ptes, phys_pmd_init, phys_pte_init, phys_pud_init
from earlymm.kernel.mm_state import MmState
from earlymm.platform.pc import pc_e820

from .conftest import GiB, MiB, make_boot

RAM, RES = RegionType.RAM, RegionType.RESERVED
NX = 1 << 63
RO_LARGE = NX | 0x80 | 0x20 | 0x1  # P, A, PSE, NX; not writable, not global: someone else's large page
TABLE = 0x67  # _PAGE_TABLE


def booted(profile: str, e820: list[Region]) -> tuple[KernelContext, MmState]:
    r = make_boot(profile=profile, e820=e820)
    assert r.outcome == "booted", r.reason
    return r.ctx, r.ctx.mm


def scratch(ctx: KernelContext, st: MmState, entries: dict[int, int]) -> int:
    """A fresh table page (alloc_low_pages) holding ``entries``; its __va."""
    page = st.alloc_low_page(ctx, "scratch")
    for i, v in entries.items():
        ctx.wr(page + 8 * i, v)
    return page


def table(ctx: KernelContext, va: int) -> np.ndarray:
    return np.frombuffer(ctx.cpu.read(va, 4096), dtype="<u8").copy()


def leaves(base: int, step: int, flags: int, n: int = 512) -> np.ndarray:
    return (np.uint64(base) + np.arange(n, dtype=np.uint64) * np.uint64(step)) | np.uint64(flags)


HOLE_256M = [Region(0, 0x9FC00, RAM), Region(0x9FC00, 0xA0000, RES), Region(0xF0000, 0x10_0000, RES),
             Region(0x10_0000, 256 * MiB, RAM), Region(256 * MiB, 258 * MiB, RES), Region(258 * MiB, GiB, RAM)]


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_phys_pte_init_keeps_present_ptes_and_clears_past_end_only_off_ram(profile: str) -> None:
    """PTE page of [0, 2M); map [0x9e000, 0x9f000). The kernel's e820 (after trim_bios_range): RAM
    [0x1000, 0x9fc00), reserved to 0xa0000, nothing to 0xf0000, reserved to 1M, RAM from 1M."""
    ctx, st = booted(profile, HOLE_256M)
    mark = 0x7_7700_0000 | 0x163  # recognisable values: none of them is what phys_pte_init would write
    pre = {0x10: mark, 0x9E: mark, 0x9F: mark, 0xA0: mark, 0xF0: mark, 0x100: mark, 0x1FF: mark}
    page = scratch(ctx, st, pre)
    phys_pte_init(ctx, st, page, 0x9D000, 0x9F000, __PAGE_KERNEL)
    want = np.zeros(512, dtype=np.uint64)
    want[0x10] = mark  # before addr: not visited
    want[0x9D] = 0x9D000 | __PAGE_KERNEL  # empty, in range: PAGE_KERNEL
    want[0x9E] = mark  # present, in range: kept
    want[0x9F] = mark  # past end, [0x9f000, 0xa0000) holds RAM up to 0x9fc00: kept
    # 0xa0 (no RAM) and 0xf0 (reserved) cleared; 0x100 and 0x1ff (RAM from 1M) kept
    want[0x100] = want[0x1FF] = mark
    assert (table(ctx, page) == want).all(), {i: hex(v) for i, v in enumerate(table(ctx, page)) if v != want[i]}


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_phys_pmd_init_with_2m_pages_reuses_what_is_there(profile: str) -> None:
    """PMD page of GiB 0 with RAM but for [256M, 258M); map [128M, 136M) (entries 64–67) with 2 MiB pages
    allowed: 64 empty → leaf; 65 a read-only large page → kept as it is; 66 a PTE table → descended
    into (its present PTE kept, the rest filled); 67 empty → leaf. Past end: 100, 129, 511 (RAM) kept,
    128 (the hole) cleared; 10 (before addr) not visited."""
    ctx, st = booted(profile, HOLE_256M)
    pte_mark = (132 * MiB) | 0x161  # a read-only PTE someone left in the PTE table
    pte_page = scratch(ctx, st, {0: pte_mark})
    mark = (200 * MiB) | 0x1E3
    pre = {10: mark, 65: (130 * MiB) | RO_LARGE, 66: ctx.pa(pte_page) | TABLE, 100: mark, 128: mark, 129: mark,
           511: mark}
    page = scratch(ctx, st, pre)
    phys_pmd_init(ctx, st, page, 128 * MiB, 136 * MiB, PG_LEVEL_2M, __PAGE_KERNEL)
    want = np.zeros(512, dtype=np.uint64)
    want[[10, 100, 129, 511]] = mark
    want[64] = (128 * MiB) | __PAGE_KERNEL | 0x80
    want[65] = (130 * MiB) | RO_LARGE
    want[66] = ctx.pa(pte_page) | TABLE
    want[67] = (134 * MiB) | __PAGE_KERNEL | 0x80
    assert (table(ctx, page) == want).all(), {i: hex(v) for i, v in enumerate(table(ctx, page)) if v != want[i]}
    ptes = leaves(132 * MiB, 4096, __PAGE_KERNEL)
    ptes[0] = pte_mark
    assert (table(ctx, pte_page) == ptes).all()


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_phys_pmd_init_without_2m_pages_splits_keeping_the_protection(profile: str) -> None:
    """The same PMD page, 4 KiB pages only: the read-only NX large page at 65 is split — a new PTE page of
    512 PTEs with its flags less PSE (P A NX, read-only), linked with _PAGE_TABLE; the empty 64 gets a
    PTE page of PAGE_KERNEL PTEs."""
    ctx, st = booted(profile, HOLE_256M)
    page = scratch(ctx, st, {65: (130 * MiB) | RO_LARGE})
    phys_pmd_init(ctx, st, page, 128 * MiB, 132 * MiB, 0, __PAGE_KERNEL)
    got = table(ctx, page)
    assert got[64] & 0xFFF == TABLE and got[65] & 0xFFF == TABLE and not got[66]
    assert (table(ctx, ctx.va(int(got[64]) & ~0xFFF)) == leaves(128 * MiB, 4096, __PAGE_KERNEL)).all()
    split = table(ctx, ctx.va(int(got[65]) & ~0xFFF))
    assert (split == leaves(130 * MiB, 4096, RO_LARGE & ~0x80)).all(), hex(int(split[0]))


@pytest.mark.parametrize("profile", ["v3.9", "current"])
def test_phys_pud_init_reuses_or_splits_1g_pages(profile: str) -> None:
    """PUD page of the first 512 GiB, RAM [1M, 3G) and [4G, 9G); map [4G, 6G) (entries 4, 5). With 1 GiB
    pages allowed the read-only 1 GiB page at 4 is kept and 5 becomes PAGE_KERNEL_LARGE; past end, 6 (RAM)
    is kept and 9 (no RAM) cleared. With 2 MiB pages only, 4 is split into a PMD page of 2 MiB leaves
    with its protection (PSE put back on each leaf), and 5 gets a PMD page of PAGE_KERNEL 2 MiB leaves."""
    ctx, st = booted(profile, pc_e820(8 * GiB))
    mark = (6 * GiB) | 0x1E3
    ro_1g = (4 * GiB) | RO_LARGE
    page = scratch(ctx, st, {4: ro_1g, 6: mark, 9: (9 * GiB) | 0x1E3})
    phys_pud_init(ctx, st, page, 4 * GiB, 6 * GiB, PG_LEVEL_2M | PG_LEVEL_1G)
    # 6.1 on the default CPU (an Intel one, Meltdown-affected) enables PTI, and probe_page_size_mask keeps
    # _PAGE_GLOBAL out of __default_kernel_pte_mask, which masks PAGE_KERNEL(_LARGE) (init.c @ v6.1)
    kernel = __PAGE_KERNEL & ~0x100 if profile == "current" else __PAGE_KERNEL
    want = np.zeros(512, dtype=np.uint64)
    want[4], want[5], want[6] = ro_1g, (5 * GiB) | kernel | 0x80, mark
    assert (table(ctx, page) == want).all(), {i: hex(v) for i, v in enumerate(table(ctx, page)) if v != want[i]}

    page = scratch(ctx, st, {4: ro_1g})
    phys_pud_init(ctx, st, page, 4 * GiB, 6 * GiB, PG_LEVEL_2M)
    got = table(ctx, page)
    assert got[4] & 0xFFF == TABLE and got[5] & 0xFFF == TABLE
    assert (table(ctx, ctx.va(int(got[4]) & ~0xFFF)) == leaves(4 * GiB, 2 * MiB, RO_LARGE)).all()
    assert (table(ctx, ctx.va(int(got[5]) & ~0xFFF)) == leaves(5 * GiB, 2 * MiB, kernel | 0x80)).all()


@pytest.mark.parametrize(("base", "step", "n", "prot", "mask"), [
    (0x9D000, 1 << 12, 3, __PAGE_KERNEL, (1 << 64) - 1),  # v3.9 with NX: every bit supported
    (0x4000_0000, 1 << 21, 512, NX | 0x1E3, (1 << 64) - 1 - NX),  # no NX: bit 63 dropped from every leaf
    (0, 1 << 30, 64, 0x1E3, (1 << 64) - 1),
    (0x20_0000, 1 << 21, 5, 0x1E3 | (1 << 22), (1 << 64) - 1),  # a prot bit inside the addresses: ORed in
    (0x1000, 1 << 21, 4, 0x1E3, (1 << 64) - 1),  # a base off the step: no progression to take
    (0x40_0000_0000, 1 << 21, 3, 0x1E3, (1 << 64) - 1 - (1 << 39)),  # the mask drops an address bit
    (0, 1 << 12, 0, 0x63, (1 << 64) - 1),
])
def test_pfn_ptes_is_pfn_pte_of_each_page(base: int, step: int, n: int, prot: int, mask: int) -> None:
    """The run of leaves is, entry by entry, ``pfn_pte(pa >> PAGE_SHIFT, prot)`` after ``massage_pgprot``:
    ``(pa | prot) & __supported_pte_mask`` (pgtable.h), whether or not the run is a plain progression."""
    ctx, st = booted("v3.9", pc_e820(GiB))
    st.supported_pte_mask = mask
    got = pfn_ptes(ctx, st, base, step, n, prot)
    assert got.tolist() == [((base + k * step) | prot) & mask for k in range(n)]
