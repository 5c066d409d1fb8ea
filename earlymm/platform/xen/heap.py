"""Xen 4.17's host memory up to the dom0 build: where Xen moved itself and the boot modules, the boot
allocator, and the buddy heap that ``alloc_domheap_pages`` draws dom0's memory from.

Model of xen/arch/x86/setup.c ``__start_xen`` (the backwards walk over the e820 map relocating Xen below
4 GiB and the multiboot modules — the dom0 kernel with its ``bzimage_headroom`` and the initrd — to the
top of RAM, ``consider_modules``; the boot allocator fed with what is left), xen/arch/x86/mm.c
``init_frametable`` (2 MiB chunks per valid PDX group range from ``alloc_boot_pages``),
xen/common/page_alloc.c ``alloc_boot_pages``, ``end_boot_allocator``/``_init_heap_pages`` (free in
power-of-two chunks, merging buddies; the pages are dirty at boot — ``bootscrub=idle`` — so every free
buddy goes to the tail of its list), ``get_free_buddy`` (highest zone first, smallest order first, the
head of the list; a request that does not accept dirty pages rotates each head to the tail and is then
retried accepting them), ``alloc_heap_pages`` (the lower halves of a split go back, the top piece is
returned) and xen/arch/x86/x86_64/mm.c ``paging_init`` (the m2p and compat m2p in 2 MiB heap
chunks), all @ RELEASE-4.17.7. Zones are ``flsl(mfn)``; one NUMA node.

Differences: only the allocations that take megabytes are modelled (the frame table, the m2p tables,
the modules, Xen's image); Xen's many small allocations (page tables of its own mappings, per-CPU
areas, stacks, the console ring, ACPI and IRQ structures) are not, so a host whose free chunks are
within a few pages of a boundary may place dom0 elsewhere than the real Xen. ``XEN_RELOC_SIZE`` is the
Debian 4.17.7 build's ``__pa(__2M_rwdata_end)`` rounded to 2 MiB; the kexec area is not reserved.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from earlymm.hw.memory import Region, RegionType

PAGE_SHIFT = 12
MiB, GiB = 1 << 20, 1 << 30
MAX_ORDER = 18  # CONFIG_PAGEALLOC_MAX_ORDER = 2 * PAGETABLE_ORDER
L2_MASK = (2 * MiB) - 1
XEN_IMG_OFFSET = 2 * MiB  # the image starts 2 MiB into the relocated area
XEN_RELOC_SIZE = 6 * MiB  # Debian xen-hypervisor-4.17-amd64 4.17.7: "New Xen image base" = top - 6 MiB
DIRECTMAP_LIMIT = 4 * GiB  # ARRAY_SIZE(l2_directmap) << L2_PAGETABLE_SHIFT: Xen stays below 4 GiB
PDX_GROUP_PAGES = 1 << 16  # PDX_GROUP_COUNT: one 2 MiB piece of frame table (32-byte page_info)
PAGE_INFO_SIZE = 32
DMA_ZONE = 20  # bits_to_zone(32): allocations without a width try zones above it first


def fls(x: int) -> int:
    return x.bit_length()


def zone_of(mfn: int) -> int:
    return fls(mfn)


@dataclass
class BootModule:
    """A multiboot module: ``start`` (bytes), its length, and the room in front of it (the kernel's)."""

    name: str
    length: int
    headroom: int = 0
    start: int = 0
    placed: bool = False


@dataclass
class HostLayout:
    xen_phys_start: int = 0
    xen_image: tuple[int, int] = (0, 0)  # the reserved image [__pa(_stext), __pa(__2M_rwdata_end))
    modules: list[BootModule] = field(default_factory=list)
    frame_table: list[tuple[int, int]] = field(default_factory=list)  # mfn ranges
    m2p_chunks: list[int] = field(default_factory=list)  # mfns of the 64-bit m2p's 2 MiB chunks
    compat_m2p_chunks: list[int] = field(default_factory=list)
    max_page: int = 0
    total_pages: int = 0  # "System RAM"


def consider_modules(s: int, e: int, size: int, taken: list[tuple[int, int]]) -> int:
    """``consider_modules``: the highest end ≤ ``e`` of a ``size`` block in [s, e) clear of ``taken``."""
    for i, (start, end) in enumerate(taken):
        if s < end and start < e:
            hi = consider_modules(end, e, size, taken[i + 1:])
            if hi > end:
                return hi
            return consider_modules(s, start, size, taken[i + 1:])
    return e if s + size <= e else 0


class BootAllocator:
    """``bootmem_region_list``: sorted [s, e) page ranges; ``alloc_boot_pages`` takes from the top."""

    def __init__(self) -> None:
        self.regions: list[list[int]] = []

    def add(self, s: int, e: int) -> None:
        if s < e:
            self.regions.append([s, e])
            self.regions.sort()

    def alloc(self, nr: int, align: int) -> int:
        for r in reversed(self.regions):
            pg = (r[1] - nr) & ~(align - 1)
            if pg >= r[1] or pg < r[0]:
                continue
            end = r[1]
            r[1] = pg
            self.add(pg + nr, end)
            self.regions = [x for x in self.regions if x[0] < x[1]]
            return pg
        raise ValueError("the boot allocator ran out of memory")


class BuddyHeap:
    """One node's free lists, ``heap[zone][order]`` as deques (the head at the left); every chunk dirty."""

    def __init__(self) -> None:
        self.lists: dict[tuple[int, int], deque[int]] = {}
        self.free_order: dict[int, int] = {}  # head mfn of a free chunk → its order

    def _list(self, zone: int, order: int) -> deque[int]:
        return self.lists.setdefault((zone, order), deque())

    def free(self, mfn: int, order: int) -> None:
        """``free_heap_pages`` with merging; the chunk goes to the list's tail (it needs scrubbing)."""
        zone = zone_of(mfn)
        while order < MAX_ORDER:
            mask = 1 << order
            buddy = mfn - mask if mfn & mask else mfn + mask
            if self.free_order.get(buddy) != order:
                break
            self._list(zone_of(buddy), order).remove(buddy)
            del self.free_order[buddy]
            mfn = min(mfn, buddy)
            order += 1
        self.free_order[mfn] = order
        self._list(zone, order).append(mfn)

    def init_pages(self, s: int, e: int) -> None:
        """``_init_heap_pages``: power-of-two chunks from ``s`` up (mfn 0 kept back)."""
        if s == 0:
            s = 1
        while s < e:
            order = min(MAX_ORDER, fls(e - s) - 1)
            if s:
                order = min(order, (s & -s).bit_length() - 1)
            self.free(s, order)
            s += 1 << order

    def _take(self, zone_lo: int, zone_hi: int, order: int) -> tuple[int, int, int] | None:
        for zone in range(zone_hi, zone_lo - 1, -1):
            for j in range(order, MAX_ORDER + 1):
                lst = self.lists.get((zone, j))
                if lst:
                    return lst.popleft(), j, zone
        return None

    def _rotate(self, zone_lo: int, zone_hi: int, order: int) -> None:
        """The clean-only pass of ``get_free_buddy`` over dirty chunks: each head goes to the tail."""
        for zone in range(zone_hi, zone_lo - 1, -1):
            for j in range(order, MAX_ORDER + 1):
                lst = self.lists.get((zone, j))
                if lst:
                    lst.rotate(-1)

    def alloc(self, order: int, *, no_scrub: bool = False, no_dma: bool = False) -> int:
        """``alloc_domheap_pages``: zones above the DMA zone first, then (unless ``MEMF_no_dma``) all;
        returns the first mfn."""
        top = max((z for z, _o in self.lists if self.lists[(z, _o)]), default=0)
        los = (DMA_ZONE + 1,) if no_dma else (DMA_ZONE + 1, 1) if top > DMA_ZONE else (1,)
        for lo in los:
            if lo > top:
                continue
            if not no_scrub:
                self._rotate(lo, top, order)
            got = self._take(lo, top, order)
            if got is None:
                continue
            mfn, j, zone = got
            del self.free_order[mfn]
            while j != order:
                j -= 1
                self.free_order[mfn] = j
                self._list(zone, j).append(mfn)
                mfn += 1 << j
            return mfn
        raise ValueError(f"Xen's heap has no free block of {1 << order} pages")

    def avail(self) -> int:
        return sum(1 << o for o in self.free_order.values())


def qemu_pc_e820(mem: int) -> list[Region]:
    """The map QEMU 7.2's ``pc`` machine with SeaBIOS gives a multiboot kernel: low RAM to 3 GiB (2 GiB
    and less: to the end) with SeaBIOS's 128 KiB at its top reserved, the rest above 4 GiB, the BIOS ROM
    below 4 GiB and the reserved window at 1012 GiB (as the fixtures' Xen-e820 maps show)."""
    low = mem if mem <= 0xB000_0000 else 3 * GiB
    out = [Region(0, 0x9FC00, RegionType.RAM), Region(0x9FC00, 0xA0000, RegionType.RESERVED),
           Region(0xF0000, 0x10_0000, RegionType.RESERVED), Region(0x10_0000, low - 0x20000, RegionType.RAM),
           Region(low - 0x20000, low, RegionType.RESERVED), Region(0xFFFC_0000, 1 << 32, RegionType.RESERVED)]
    if mem > low:
        out.append(Region(1 << 32, (1 << 32) + mem - low, RegionType.RAM))
    out.append(Region(0xFD_0000_0000, 1 << 40, RegionType.RESERVED))
    return out


def _ram(e820: list[Region]) -> list[tuple[int, int]]:
    return sorted((r.start, r.end) for r in e820 if r.kind is RegionType.RAM)


def start_xen(e820: list[Region], modules: list[BootModule]) -> tuple[HostLayout, BuddyHeap]:
    """``__start_xen`` as far as memory goes, up to the heap dom0 is built from."""
    lay = HostLayout(modules=modules)
    ram = _ram(e820)
    if not ram:
        raise ValueError("the e820 map has no RAM")
    lay.total_pages = sum((e - s) >> PAGE_SHIFT for s, e in ram)
    taken: list[tuple[int, int]] = []
    for start, end in reversed(ram):
        s, e = max((start + L2_MASK) & ~L2_MASK, 2 * MiB), end & ~L2_MASK
        if s >= e:
            continue
        if not lay.xen_phys_start and e <= DIRECTMAP_LIMIT:
            top = consider_modules(s, e, XEN_RELOC_SIZE + L2_MASK, taken) & ~L2_MASK
            if top > s:
                lay.xen_phys_start = top - XEN_RELOC_SIZE
                lay.xen_image = (lay.xen_phys_start + XEN_IMG_OFFSET, top)
                taken.append(lay.xen_image)
        for mod in reversed(modules):
            if mod.placed:
                continue
            size = (mod.headroom + mod.length + 0xFFF) & ~0xFFF
            top = consider_modules(s, e, size, taken)
            if s < top:
                mod.start, mod.placed = top - size, True
                taken.append((mod.start, top))
    if not lay.xen_phys_start:
        raise ValueError("Not enough memory to relocate Xen")
    if not all(m.placed for m in modules):
        raise ValueError("Not enough memory to relocate the dom0 kernel image")
    boot = BootAllocator()
    for start, end in ram:  # the e820 map with the modules and Xen's image reserved, from 1 MiB
        pieces = [(max((start + 0xFFF) & ~0xFFF, MiB), end & ~0xFFF)]
        for ts, te in taken:
            pieces = [p for a, b in pieces for p in ((a, min(b, ts)), (max(a, te), b)) if p[0] < p[1]]
        for a, b in pieces:
            boot.add(a >> PAGE_SHIFT, b >> PAGE_SHIFT)
    lay.max_page = ram[-1][1] >> PAGE_SHIFT
    _frame_table(lay, boot, ram)
    heap = BuddyHeap()
    for s, e in boot.regions:  # end_boot_allocator
        heap.init_pages(s, e)
    _m2p(lay, heap, ram)
    return lay, heap


def _valid_groups(ram: list[tuple[int, int]], max_idx: int) -> list[bool]:
    valid = [False] * max_idx
    for s, e in ram:
        for g in range((s >> PAGE_SHIFT) // PDX_GROUP_PAGES, ((e >> PAGE_SHIFT) - 1) // PDX_GROUP_PAGES + 1):
            if g < max_idx:
                valid[g] = True
    return valid


def _frame_table(lay: HostLayout, boot: BootAllocator, ram: list[tuple[int, int]]) -> None:
    """``init_frametable``: one chunk per run of valid PDX groups, the last up to ``max_pdx``."""
    max_idx = -(-lay.max_page // PDX_GROUP_PAGES)
    valid = _valid_groups(ram, max_idx)
    runs: list[tuple[int, int]] = []
    g = 0
    while g < max_idx:
        if not valid[g]:
            g += 1
            continue
        h = g
        while h < max_idx and valid[h]:
            h += 1
        runs.append((g, h))
        g = h
    for i, (g, h) in enumerate(runs):
        pages_end = lay.max_page if i == len(runs) - 1 else h * PDX_GROUP_PAGES
        s, e = g * PDX_GROUP_PAGES * PAGE_INFO_SIZE, pages_end * PAGE_INFO_SIZE
        while s < e:  # init_frametable_chunk: 2 MiB steps (1 GiB ones never fit these sizes)
            step = 512
            while step and s + (step << PAGE_SHIFT) > e + (4 << PAGE_SHIFT):
                step >>= 9
            step = max(step, 1)
            mfn = boot.alloc(step, step)
            lay.frame_table.append((mfn, mfn + step))
            s += step << PAGE_SHIFT


def _m2p(lay: HostLayout, heap: BuddyHeap, ram: list[tuple[int, int]]) -> None:
    """``paging_init``: 2 MiB chunks of the m2p (one per GiB of mfns with a valid PDX group), then of the
    compat m2p (one per 2 GiB)."""
    max_idx = -(-lay.max_page // PDX_GROUP_PAGES) + 8
    valid = _valid_groups(ram, max_idx)
    mpt = (lay.max_page * 8 + L2_MASK) & ~L2_MASK
    for i in range(mpt >> 21):
        if any(valid[(i << 18) // PDX_GROUP_PAGES + n] for n in range(4)):
            lay.m2p_chunks.append(heap.alloc(9))
    compat = min((mpt >> 1) + MiB, 1 * GiB) & ~L2_MASK
    for i in range(compat >> 21):
        first = (i << 19) // PDX_GROUP_PAGES
        if any(valid[first + n] for n in range(8) if first + n < max_idx):
            lay.compat_m2p_chunks.append(heap.alloc(9))
