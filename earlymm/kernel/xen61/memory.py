"""``xen_memory_setup`` of Linux 6.1 (arch/x86/xen/setup.c @ v6.1; spec §5): the kernel's e820 from
Xen's machine memory map, the extra (balloon) pfns, and the identity map of every non-RAM pfn below
``nr_pages`` with the remapping of the RAM frames behind it (``xen_set_identity_and_remap``).

Differences: ``e820__update_table`` is reduced to sorting and merging adjacent entries of one type
(the maps here have no overlaps but the ISA hole, which only covers non-RAM); a p2m list or initrd that
conflicts with the e820 map (``xen_relocate_p2m``, the initrd move) is refused as not modelled, as is
the release fallback when no pfn range is left to remap into; ``xen_pt_check_e820`` is not run.
"""

from __future__ import annotations

from earlymm.kernel.xen61.guest import (
    IDENTITY_FRAME_BIT,
    INVALID_P2M_ENTRY,
    PAGE_KERNEL,
    PAGE_SHIFT,
    PAGE_SIZE,
    START_KERNEL_MAP,
    Xen61Guest,
)
from earlymm.kernel.xen61.mmu_pv import entry_table, index, xen_flush_tlb_one_user, xen_set_pte_init

E820_RAM, E820_RESERVED, E820_UNUSABLE = 1, 2, 5
MAXMEM = 1 << 46  # 4-level paging
EXTRA_MEM_RATIO = 10
REMAP_SIZE = 512 - 3  # P2M_PER_PAGE - 3: the mfns one xen_remap_buf holds
ISA_START, ISA_END = 0xA0000, 0x100000


def pfn_down(a: int) -> int:
    return a >> PAGE_SHIFT


def pfn_up(a: int) -> int:
    return (a + PAGE_SIZE - 1) >> PAGE_SHIFT


def set_pte_vaddr(g: Xen61Guest, vaddr: int, pte: int) -> None:
    """``set_pte_vaddr`` (init_64.c) for an address whose tables exist: the PTE through ``set_pte``,
    then ``flush_tlb_one_kernel``."""
    e = g.rd(g.sym("init_top_pgt") + 8 * index(vaddr, 39))
    if not e:
        g.note("PGD FIXMAP MISSING, it should be setup in head.S!")
        return
    table = entry_table(g, e)
    for shift in (30, 21):
        e = g.rd(table + 8 * index(vaddr, shift))
        if not e & 1:
            g.bug("arch/x86/mm/init_64.c", f"set_pte_vaddr({vaddr:#x}): spp_getpage is not modelled")
        table = entry_table(g, e)
    xen_set_pte_init(g, table + 8 * index(vaddr, 12), pte)
    xen_flush_tlb_one_user(g, vaddr)


def set_phys_range_identity(g: Xen61Guest, pfn_s: int, pfn_e: int) -> int:
    if pfn_s >= g.p2m_size or pfn_s > pfn_e:
        return 0
    pfn_e = min(pfn_e, g.p2m_size)
    for pfn in range(pfn_s, pfn_e):
        g.wr(g.p2m_addr + 8 * pfn, pfn | IDENTITY_FRAME_BIT)
    return pfn_e - pfn_s


def sanitize(entries: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for s, e, t in sorted(entries):
        if out and out[-1][2] == t and out[-1][1] >= s:
            out[-1] = (out[-1][0], max(out[-1][1], e), t)
        elif s < e:
            out.append((s, e, t))
    return out


class MemorySetup:
    """One run of ``xen_memory_setup`` over ``xen_e820_table`` (start, end, type)."""

    def __init__(self, g: Xen61Guest, xen_e820: list[tuple[int, int, int]]) -> None:
        self.g = g
        self.xen_e820 = [(s, e, E820_RAM if t == E820_UNUSABLE else t) for s, e, t in sanitize(xen_e820)]

    def foreach_remap_area(self, nr_pages: int, func: str) -> int:
        """``xen_foreach_remap_area``: non-RAM regions and gaps, combined up to the next RAM region (or
        the map's end), rounded out to whole pages."""
        start, ret = 0, 0
        last = len(self.xen_e820) - 1
        for i, (s, e, t) in enumerate(self.xen_e820):
            if t == E820_RAM or i == last:
                start_pfn, end_pfn = pfn_down(start), pfn_up(e)
                if t == E820_RAM:
                    end_pfn = pfn_up(s)
                if start_pfn < end_pfn:
                    ret = self.count_remap_pages(start_pfn, end_pfn, nr_pages, ret) if func == "count" else \
                        self.set_identity_and_remap_chunk(start_pfn, end_pfn, nr_pages, ret)
                start = e
        return ret

    @staticmethod
    def count_remap_pages(start_pfn: int, end_pfn: int, nr_pages: int, remap_pages: int) -> int:
        return remap_pages if start_pfn >= nr_pages else remap_pages + min(end_pfn, nr_pages) - start_pfn

    def find_pfn_range(self, min_pfn: int) -> tuple[int, int]:
        """``xen_find_pfn_range``: (pages, new min_pfn) of the first RAM region ending above ``min_pfn``."""
        for s, e, t in self.xen_e820:
            if t != E820_RAM or pfn_down(e) <= min_pfn:
                continue
            s_pfn = pfn_up(s)
            return (pfn_down(e) - min_pfn, min_pfn) if s_pfn <= min_pfn else (pfn_down(e) - s_pfn, s_pfn)
        return 0, min_pfn

    def do_set_identity_and_remap_chunk(self, start_pfn: int, size: int, remap_pfn: int) -> None:
        """Each run of up to ``REMAP_SIZE`` pfns: its first frame mapped at ``xen_remap_buf`` and the
        run's mfns saved in it (a list ``xen_remap_memory`` walks later), the pfns made identity."""
        g = self.g
        buf = g.sym("xen_remap_buf")
        mfn_save = g.virt_to_machine(buf) >> PAGE_SHIFT
        left, ident, remap = size, start_pfn, remap_pfn
        while ident < start_pfn + size:
            chunk = min(left, REMAP_SIZE)
            mfn = g.pfn_to_mfn(ident)
            set_pte_vaddr(g, buf, g.mfn_pte(mfn, PAGE_KERNEL))
            mfns = [g.pfn_to_mfn(ident + i) for i in range(chunk)]
            g.write(buf, b"".join(v.to_bytes(8, "little") for v in [g.remap_mfn, remap, chunk, *mfns]))
            g.remap_mfn = mfn
            set_phys_range_identity(g, ident, ident + chunk)
            left -= chunk
            ident += REMAP_SIZE
            remap += REMAP_SIZE
        set_pte_vaddr(g, buf, g.mfn_pte(mfn_save, PAGE_KERNEL))

    def set_identity_and_remap_chunk(self, start_pfn: int, end_pfn: int, nr_pages: int, remap_pfn: int) -> int:
        g = self.g
        i, n = 0, end_pfn - start_pfn
        remap_pfn = remap_pfn or nr_pages
        while i < n:
            cur = start_pfn + i
            size = n - i
            if cur >= nr_pages:
                set_phys_range_identity(g, cur, cur + size)
                break
            size = min(size, nr_pages - cur)
            room, remap_pfn = self.find_pfn_range(remap_pfn)
            if not room:
                g.bug("arch/x86/xen/setup.c", "no pfn range to remap into (xen_set_identity_and_release_chunk "
                      "is not modelled)")
            size = min(size, room)
            self.do_set_identity_and_remap_chunk(cur, size, remap_pfn)
            i += size
            remap_pfn += size
        pfn = start_pfn
        while pfn <= g.max_pfn_mapped and pfn < end_pfn:  # zap the pfns' __va mappings
            g.update_va_mapping(g.va(pfn << PAGE_SHIFT), 0, 0)
            pfn += 1
        g.note(f"xen_set_identity_and_remap: pfns {start_pfn:#x}-{end_pfn - 1:#x} identity"
               + (f", their frames to be remapped at pfn {remap_pfn - min(n, nr_pages - start_pfn):#x}"
                  if start_pfn < nr_pages else ""))
        return remap_pfn

    def run(self, max_reservation: int) -> None:
        g = self.g
        limit = MAXMEM // PAGE_SIZE
        max_pfn = min(limit, g.si.nr_pages)
        mem_end = max_pfn << PAGE_SHIFT
        max_pages = min(max_reservation, limit)
        max_pages += self.foreach_remap_area(max_pfn, "count")
        extra = max_pages - max_pfn if max_pages > max_pfn else 0
        extra = min(EXTRA_MEM_RATIO * min(max_pfn, pfn_down(MAXMEM)), extra, max(max_pages - max_pfn, 0))
        e820: list[tuple[int, int, int]] = []
        addr = 0
        for s, e, t in self.xen_e820:
            addr, size = s, e - s
            while size:
                chunk, discard = size, False
                if t == E820_RAM:
                    if addr < mem_end:
                        chunk = min(size, mem_end - addr)
                    elif extra:
                        chunk = min(size, extra << PAGE_SHIFT)
                        pfn_s = pfn_up(addr)
                        n_pfns = pfn_down(addr + chunk) - pfn_s
                        extra -= n_pfns
                        g.extra_mem.append((pfn_s, n_pfns))  # xen_add_extra_mem (memblock_reserve'd too)
                        g.max_p2m_pfn = pfn_s + n_pfns
                    else:
                        discard = True
                if not discard:
                    a, b = (pfn_up(addr) << PAGE_SHIFT, (addr + chunk) & ~(PAGE_SIZE - 1)) if t == E820_RAM \
                        else (addr, addr + chunk)
                    e820.append((a, b, t))
                addr += chunk
                size -= chunk
        set_phys_range_identity(g, addr // PAGE_SIZE, (1 << 64) - 1)
        e820.append((ISA_START, ISA_END, E820_RESERVED))
        g.e820 = sanitize(e820)
        if self.reserved(g.pa(g.sym("_text")), g.sym("_end") - g.sym("_text")):
            g.bug("arch/x86/xen/setup.c", "Xen hypervisor allocated kernel memory conflicts with E820 map")
        si = g.si
        if si.mfn_list >= START_KERNEL_MAP:  # xen_reserve_xen_mfnlist
            start, size = g.pa(si.mfn_list), -(-si.nr_pages * 8 // PAGE_SIZE) * PAGE_SIZE
        else:
            start, size = si.first_p2m_pfn << PAGE_SHIFT, si.nr_p2m_frames << PAGE_SHIFT
        if self.reserved(start, size):
            g.bug("arch/x86/xen/setup.c", "the p2m list conflicts with the E820 map: xen_relocate_p2m is not modelled")
        self.foreach_remap_area(max_pfn, "remap")
        g.note(f"xen_memory_setup: Released {g.released_pages} page(s); xen_max_p2m_pfn {g.max_p2m_pfn:#x}")

    def reserved(self, start: int, size: int) -> bool:
        """``xen_is_e820_reserved``: not wholly inside one RAM entry of Xen's map."""
        if not size:
            return False
        return not any(t == E820_RAM and s <= start and start + size <= e for s, e, t in self.xen_e820)


def e820_end_of_ram_pfn(e820: list[tuple[int, int, int]]) -> int:
    return max((pfn_down(e) for s, e, t in e820 if t == E820_RAM), default=0)


def xen_build_dynamic_phys_to_machine(g: Xen61Guest) -> None:
    """``xen_build_dynamic_phys_to_machine`` (p2m.c @ v6.1): the builder's list, padded to a whole page
    of entries with ``INVALID_P2M_ENTRY``."""
    si = g.si
    g.p2m_addr = si.mfn_list
    g.p2m_size = -(-si.nr_pages // 512) * 512
    for pfn in range(si.nr_pages, g.p2m_size):
        g.wr(g.p2m_addr + 8 * pfn, INVALID_P2M_ENTRY)
    g.max_p2m_pfn = g.p2m_size

