"""``paging_init``'s struct pages: ``sparse_init`` populating the vmemmap (arch/x86/mm/init_64.c
``paging_init``, ``vmemmap_populate``; mm/sparse.c, mm/sparse-vmemmap.c @ v3.9; spec §2.5).

Each present memory section (128 MiB) gets its ``struct page`` array at ``vmemmap + pfn *
sizeof(struct page)``. The arrays come from one PMD-aligned boot-memory buffer
(``sparse_mem_maps_populate_node``); without PSE (a Xen PV guest) they are mapped with 4 KiB pages, the
tables allocated on demand (``vmemmap_pgd/pud/pmd/pte_populate``) and linked through ``pv_ops``.

Differences: only the basepage path is modelled (the PSE path maps 2 MiB blocks); zone and node setup is
not.
"""

from __future__ import annotations

from earlymm.arch.addr import Pfn, VirtAddr
from earlymm.hw.faults import Halt
from earlymm.kernel.consts import __PAGE_KERNEL, _PAGE_TABLE, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import Note
from earlymm.kernel.mm_state import MmState

SECTION_SIZE_BITS = 27
PAGES_PER_SECTION = 1 << (SECTION_SIZE_BITS - PAGE_SHIFT)
MAX_DMA_ADDRESS_PA = 16 << 20  # __pa(MAX_DMA_ADDRESS)


def bootmem_alloc(ctx: KernelContext, st: MmState, size: int, align: int) -> int:
    """``__earlyonly_bootmem_alloc``: memblock, top-down above 16 MiB, zeroed through ``__va``."""
    pa = st.memblock.find_in_range(MAX_DMA_ADDRESS_PA, st.memblock.current_limit, size, align)
    if not pa:
        raise Halt(f"Kernel panic - not syncing: sparse_init: cannot allocate {size:#x} bytes of boot memory",
                   outcome="panic")
    st.memblock.reserve(pa, size)
    ctx.memset(ctx.va(pa), 0, size)
    return ctx.va(pa)


class VmemmapBuf:
    """``vmemmap_buf``/``vmemmap_buf_end``: the node's preallocated buffer, used page by page."""

    def __init__(self, start: int, end: int) -> None:
        self.next, self.end = start, end

    def alloc_block_buf(self, ctx: KernelContext, st: MmState) -> int:
        if self.next + PAGE_SIZE <= self.end:
            at, self.next = self.next, self.next + PAGE_SIZE
            return at
        return bootmem_alloc(ctx, st, PAGE_SIZE, PAGE_SIZE)


def _populate(ctx: KernelContext, st: MmState, entry: int, level: str) -> None:
    """``pgd_populate`` / ``pud_populate`` / ``pmd_populate_kernel`` of a fresh zeroed page at ``entry``."""
    mmu = ctx.pv.mmu
    page = bootmem_alloc(ctx, st, PAGE_SIZE, PAGE_SIZE)  # vmemmap_alloc_block(PAGE_SIZE, node)
    pfn = Pfn(ctx.pa(page) >> PAGE_SHIFT)
    val = mmu.make_entry(ctx.pa(page) | _PAGE_TABLE)
    if level == "pgd":
        mmu.alloc_pud(pfn)
        mmu.set_pgd(VirtAddr(entry), val)
    elif level == "pud":
        mmu.alloc_pmd(pfn)
        mmu.set_pud(VirtAddr(entry), val)
    else:
        mmu.alloc_pte(pfn)
        mmu.set_pmd(VirtAddr(entry), val)
    st.table_pages["vmemmap " + level] = st.table_pages.get("vmemmap " + level, 0) + 1


def vmemmap_populate_basepages(ctx: KernelContext, st: MmState, start: int, end: int, buf: VmemmapBuf) -> int:
    """Map [start, end) of the vmemmap with 4 KiB pages from ``buf``; returns the pages mapped."""
    g, mmu = ctx.pgt, ctx.pv.mmu
    mask = g.pte_pfn_mask
    prot = __PAGE_KERNEL & ctx.rd(ctx.sym("__supported_pte_mask"))
    mapped = 0
    for addr in range(start & ~(PAGE_SIZE - 1), end, PAGE_SIZE):
        entry = ctx.layout.init_pgt + 8 * g.pgd_index(addr)
        for level, index in (("pgd", g.pud_index), ("pud", g.pmd_index), ("pmd", g.pte_index)):
            if not ctx.rd(entry):
                _populate(ctx, st, entry, level)
            entry = ctx.va(ctx.entry_val(ctx.rd(entry)) & mask) + 8 * index(addr)
        if not ctx.rd(entry):
            page = buf.alloc_block_buf(ctx, st)
            mmu.set_pte(VirtAddr(entry), mmu.make_entry(ctx.pa(page) | prot))  # set_pte_at(&init_mm, …)
            mapped += 1
    return mapped


def sparse_init(ctx: KernelContext, st: MmState) -> None:
    """The present sections (those holding memblock memory), their maps in one PMD-aligned buffer, each
    populated in the vmemmap."""
    sections = sorted({s for ms, me in st.memblock.mem_ranges()
                       for s in range(ms >> SECTION_SIZE_BITS, ((me - 1) >> SECTION_SIZE_BITS) + 1)})
    size = PAGES_PER_SECTION * ctx.profile.struct_page_size
    size = (size + PMD_SIZE - 1) & ~(PMD_SIZE - 1)  # ALIGN(size, PMD_SIZE)
    start = bootmem_alloc(ctx, st, size * len(sections), PMD_SIZE)
    buf = VmemmapBuf(start, start + size * len(sections))
    pages = 0
    vmemmap, sp = ctx.profile.vmemmap_base, ctx.profile.struct_page_size
    for s in sections:
        first = s * PAGES_PER_SECTION
        pages += vmemmap_populate_basepages(ctx, st, vmemmap + first * sp,
                                            vmemmap + (first + PAGES_PER_SECTION) * sp, buf)
    ctx.emit(Note(f"sparse_init: {len(sections)} section(s), struct pages ({sp} bytes each) mapped at "
                  f"{vmemmap:#x} with {pages} 4 KiB pages"))


def paging_init(ctx: KernelContext, st: MmState) -> None:
    """v3.9 x86-64 ``paging_init``: ``sparse_memory_present_with_active_regions`` and ``sparse_init``."""
    sparse_init(ctx, st)
