"""Xen 4.17's PV dom0 builder: the start-of-day layout, the printed block, the bootstrap tables in machine
memory, the p2m list at ``XEN_ELFNOTE_INIT_P2M``, ``start_info`` and the vCPU at the kernel's entry.

Model of xen/arch/x86/pv/dom0_build.c ``dom0_construct_pv`` (with ``setup_pv_physmap``,
``mark_pv_pt_pages_rdonly``, ``alloc_chunk``) and xen/arch/x86/dom0_build.c ``dom0_compute_nr_pages``,
``parse_dom0_mem`` @ RELEASE-4.17.7, on the host of ``heap.start_xen``. Tables are bytes in machine
memory: [L4][L1][L2][L3][L1]… from ``vpt_start``, entries with Xen's ``L1_PROT`` (present, RW,
accessed, user, ``_PAGE_GUEST_KERNEL``) and ``L2/3/4_PROT``; the table pages' own mappings read-only. The
pages Xen wrote through the guest's mapping (the kernel's segments as ``elf_load_binary`` copies and
clears them, ``start_info``) carry the dirty bit the CPU set on those writes.

Differences: of Xen's own L4 slots 256–271 only the linear map (258) is filled; the shared_info page is
one heap page taken before the build (the real one is a xenheap page below 4 GiB, so ``start_info``'s
``shared_info`` differs); the IOMMU, the vCPU's other state and the console ring are not modelled. The
kernel module goes back to the heap after the load (``discard_initial_images``) before
``setup_pv_physmap`` and ``alloc_chunk`` take the rest of dom0's memory, as in Xen; since ``heap.py``
leaves out Xen's small allocations, the p2m past the initial region and the initrd (the physmap pages and
the chunks) holds the real Xen's big chunks in the same places but not every small one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from earlymm.hw.memory import PhysMem, Region, RegionMap, RegionType
from earlymm.images.pvkernel import PvKernelImage
from earlymm.platform.xen.heap import BootModule, BuddyHeap, HostLayout, start_xen

PAGE = 4096
_P, _RW, _A, _US, _D, _PSE = 0x1, 0x2, 0x20, 0x4, 0x40, 0x80
_PAGE_GUEST_KERNEL = 1 << 52
BASE_PROT = _P | _RW | _A | _US
L1_PROT = BASE_PROT | _PAGE_GUEST_KERNEL
LN_PROT = BASE_PROT | _D
START_INFO_SIZE, VGA_INFO_SIZE = 1168, 40
XEN_PROCESSOR_PMBITS = 3  # SIF_PM_MASK bits: Cx and Px handled by dom0 (the fixtures' flags 0x30b)
SIF_PRIVILEGED, SIF_INITDOMAIN, SIF_MOD_START_PFN = 1, 2, 8
LINEAR_SLOT = 258


class Chunks:
    """``alloc_chunk``: the rest of dom0's memory in power-of-two chunks — first only from above the DMA
    zone (``MEMF_no_dma``), then up to 2 MiB at a time from anywhere, each time trying smaller chunks for
    one at a higher address."""

    def __init__(self, heap: BuddyHeap) -> None:
        self.heap, self.last_order, self.no_dma = heap, 18, True

    def _try(self, order: int, no_dma: bool) -> int | None:
        try:
            return self.heap.alloc(order, no_scrub=True, no_dma=no_dma)
        except ValueError:
            return None

    def alloc_chunk(self, max_pages: int) -> tuple[int, int]:
        order = max(0, (max_pages - 1).bit_length())
        if order > self.last_order:
            order = self.last_order
        elif max_pages & (max_pages - 1):
            order -= 1
        page = None
        while True:
            page = self._try(order, self.no_dma)
            if page is not None or order == 0:
                break
            order -= 1
        if page is not None:
            self.last_order = order
        elif self.no_dma:
            self.last_order, self.no_dma = 9, False
            return self.alloc_chunk(max_pages)
        if page is None:
            raise ValueError("Not enough RAM for DOM0 reservation")
        free_order = order
        while not self.no_dma and order > 0:
            order -= 1
            pg2 = self._try(order, False)
            if pg2 is not None and pg2 > page:
                self.heap.free(page, free_order)
                page, free_order = pg2, order
            elif pg2 is not None:
                self.heap.free(pg2, order)
        return page, free_order


class Dom0MemError(ValueError):
    pass


@dataclass(frozen=True)
class MemSize:
    pages: int = 0
    percent: int = 0
    minus: bool = False

    def get(self, avail: int) -> int:
        n = self.pages + self.percent * avail // 100
        return avail - n if self.minus else n

    @property
    def set(self) -> bool:
        return bool(self.pages or self.percent)


_UNITS = {"": 10, "k": 10, "m": 20, "g": 30, "t": 40, "b": 0}
_AMT = re.compile(r"^(-?)(\d+)([kmgtbKMGTB]?)(?:(%)|\+(\d+)%)?$")


def parse_dom0_mem(text: str) -> tuple[MemSize, MemSize, MemSize]:
    """``dom0_mem=[min:<amt>,][max:<amt>,][<amt>]`` → (amount, min, max); a bare number is KiB, as Xen's
    ``parse_size_and_unit``."""
    size, lo, hi = MemSize(), MemSize(), MemSize()
    for item in text.split(","):
        which = "size"
        for tag in ("min:", "max:"):
            if item.startswith(tag):
                which, item = tag[:3], item[4:]
        m = _AMT.match(item)
        if not m:
            raise Dom0MemError(f"dom0_mem item {item!r} is not <size>, <n>% or <size>+<n>%")
        if m[4]:
            amt = MemSize(percent=int(m[2]), minus=bool(m[1]))
        else:
            amt = MemSize((int(m[2]) << _UNITS[m[3].lower()]) >> 12, int(m[5] or 0), bool(m[1]))
        if amt.percent >= 100:
            raise Dom0MemError(f"dom0_mem item {item!r}: a percentage below 100")
        size, lo, hi = (amt, lo, hi) if which == "size" else (size, amt, hi) if which == "min" else (size, lo, amt)
    return size, lo, hi


def compute_nr_pages(spec: tuple[MemSize, MemSize, MemSize], avail: int) -> int:
    """``dom0_compute_nr_pages`` for a 64-bit PV dom0 with one vCPU, no IOMMU and no shadow."""
    size, lo, hi = spec
    nr = size.get(avail) if size.set else avail - min(avail // 16, 128 << 8)
    if lo.set:
        nr = max(nr, lo.get(avail))
    if hi.set:
        nr = min(nr, hi.get(avail))
    return min(nr, avail)


def get_order_from_bytes(n: int) -> int:
    return max(0, ((n + PAGE - 1) // PAGE - 1).bit_length())


@dataclass
class Dom0:
    """The built domain: machine memory, the p2m, the printed lines, the vCPU's registers."""

    mem: PhysMem
    host: HostLayout
    heap: BuddyHeap
    console: list[str]
    p2m: np.ndarray
    nr_pages: int
    alloc_spfn: int
    v_start: int
    v_end: int
    vpt_start: int
    nr_pt_pages: int
    vstartinfo_start: int
    vstack_end: int
    vphysmap_start: int
    entry: int
    shared_info: int
    table_mfns: list[int] = field(default_factory=list)
    start_info: bytes = b""

    @property
    def cr3(self) -> int:
        return (self.alloc_spfn + ((self.vpt_start - self.v_start) >> 12)) << 12


class Dom0Builder:
    def __init__(self, kernel: PvKernelImage, e820: list[Region], dom0_mem: str, initrd_len: int, cmdline: str,
                 page1gb: bool) -> None:
        self.k, self.e820, self.initrd_len, self.cmdline, self.page1gb = kernel, e820, initrd_len, cmdline, page1gb
        self.spec = parse_dom0_mem(dom0_mem) if dom0_mem else (MemSize(), MemSize(), MemSize())

    def build(self) -> Dom0:
        k = self.k
        mods = [BootModule("kernel", k.file_size, k.headroom)] + (
            [BootModule("initrd", self.initrd_len)] if self.initrd_len else [])
        host, heap = start_xen(self.e820, mods)
        shared_info = heap.alloc(0) << 12  # alloc_xenheap_page in arch_domain_create
        con = ["*** Building a PV Dom0 ***", " Xen  kernel: 64-bit, lsb", f" Dom0 kernel: {k.describe()}"]
        if k.elf_class != 64 or k.machine != 62:
            raise ValueError("the model builds 64-bit dom0 kernels only (Mismatch between Xen and DOM0 kernel)")
        images = sum(-(-(m.headroom + m.length) // PAGE) for m in mods)
        nr_pages = compute_nr_pages(self.spec, heap.avail() + images)
        rd_len = self.initrd_len
        v_start, vkern_start, vkern_end = k.virt_base, k.virt_kstart, k.virt_kend
        if k.unmapped_initrd:
            vinitrd_start = vinitrd_end = 0
            vphysmap_start = (vkern_end + PAGE - 1) & ~(PAGE - 1)
        else:
            vinitrd_start = (vkern_end + PAGE - 1) & ~(PAGE - 1)
            vinitrd_end = vinitrd_start + rd_len
            vphysmap_start = (vinitrd_end + PAGE - 1) & ~(PAGE - 1)
        vphysmap_end = vphysmap_start + nr_pages * 8
        if k.p2m_base is not None:
            vphysmap_end = vphysmap_start
        vstartinfo_start = (vphysmap_end + PAGE - 1) & ~(PAGE - 1)
        vpt_start = (vstartinfo_start + START_INFO_SIZE + PAGE - 1) & ~(PAGE - 1)
        vstartinfo_end = vstartinfo_start + START_INFO_SIZE + VGA_INFO_SIZE

        def nr(lo: int, hi: int, s: int) -> int:
            m = (1 << s) - 1
            return (((hi + m) & ~m) - (lo & ~m)) >> s

        nr_pt = 2
        while True:
            vpt_end = vpt_start + nr_pt * PAGE
            vstack_start, vstack_end = vpt_end, vpt_end + PAGE
            v_end = (vstack_end + (1 << 22) - 1) & ~((1 << 22) - 1)
            if v_end - vstack_end < 512 << 10:
                v_end += 1 << 22
            if 1 + nr(v_start, v_end, 39) + nr(v_start, v_end, 30) + nr(v_start, v_end, 21) <= nr_pt:
                break
            nr_pt += 1
        count = v_end - v_start - (((rd_len + PAGE - 1) & ~(PAGE - 1)) if vinitrd_start else 0)
        order = get_order_from_bytes(count)
        if (1 << order) + -(-rd_len // PAGE) > nr_pages:
            raise ValueError("Domain 0 allocation is too small for kernel image")
        if k.p2m_base is not None:
            vphysmap_start, vphysmap_end = k.p2m_base, k.p2m_base + nr_pages * 8
        alloc_spfn = heap.alloc(order, no_scrub=True)
        tot = 1 << order
        alloc_epfn = alloc_spfn + tot
        initrd_pfn = -1
        initrd_mfn = 0
        if rd_len:
            initrd_pfn = (vinitrd_start - v_start) >> 12 if vinitrd_start else tot
            initrd_mfn = mods[1].start >> 12
            tot += -(-rd_len // PAGE)
        line = f" Dom0 alloc.:   {alloc_spfn << 12:016x}->{alloc_epfn << 12:016x}"
        if tot < nr_pages:
            line += f" ({nr_pages - tot} pages to be allocated)"
        con += ["PHYSICAL MEMORY ARRANGEMENT:", line]
        if rd_len:
            con.append(f" Init. ramdisk: {initrd_mfn << 12:016x}->{(initrd_mfn << 12) + rd_len:016x}")
        con.append("VIRTUAL MEMORY ARRANGEMENT:")
        rows = [("Loaded kernel", vkern_start, vkern_end)]
        if vinitrd_end > vinitrd_start:
            rows.append(("Init. ramdisk", vinitrd_start, vinitrd_end))
        rows += [("Phys-Mach map", vphysmap_start, vphysmap_end), ("Start info", vstartinfo_start, vstartinfo_end),
                 ("Page tables", vpt_start, vpt_end), ("Boot stack", vstack_start, vstack_end),
                 ("TOTAL", v_start, v_end)]
        con += [f" {(name + ':'):<15}{a:016x}->{b:016x}" for name, a, b in rows]
        con.append(f" ENTRY ADDRESS: {k.virt_entry:016x}")
        con.append("Dom0 has maximum 1 VCPUs")
        ram = [r for r in self.e820 if r.kind is RegionType.RAM]
        mem = PhysMem(absent_zero=True, regions=RegionMap(ram))
        d = Dom0(mem, host, heap, con, np.full(nr_pages, (1 << 64) - 1, dtype=np.uint64), nr_pages, alloc_spfn,
                 v_start, v_end, vpt_start, nr_pt, vstartinfo_start, vstack_end, vphysmap_start, k.virt_entry,
                 shared_info)
        self._tables(d, initrd_pfn, initrd_mfn, rd_len)
        self._load(d)
        kmod = mods[0]  # discard_initial_images: the kernel module (with its headroom) back to the heap
        heap.init_pages(kmod.start >> 12, (kmod.start + kmod.headroom + kmod.length + PAGE - 1) >> 12)
        physmap = self._physmap(d, vphysmap_start, vphysmap_end) if k.p2m_base is not None else []
        self._p2m(d, initrd_pfn, initrd_mfn, rd_len, tot, physmap)
        self._start_info(d, rd_len, initrd_pfn, vinitrd_start, tot, len(physmap))
        return d

    # -- the initial mapping ------------------------------------------------------------------------------
    def _tables(self, d: Dom0, initrd_pfn: int, initrd_mfn: int, rd_len: int) -> None:
        """The table-building loop of ``dom0_construct_pv``: page tables taken in order from ``mpt_alloc``."""
        mpt = d.alloc_spfn + ((d.vpt_start - d.v_start) >> 12)
        tabs: dict[int, np.ndarray] = {}

        def take() -> int:
            nonlocal mpt
            mpt += 1
            tabs[mpt - 1] = np.zeros(512, dtype=np.uint64)
            d.table_mfns.append(mpt - 1)
            return mpt - 1

        l4 = take()
        l3 = l2 = l1 = None
        pfn, rd_end = d.alloc_spfn, initrd_pfn + -(-rd_len // PAGE)
        rd_mfn = initrd_mfn
        for count in range((d.v_end - d.v_start) >> 12):
            va = d.v_start + (count << 12)
            if l1 is None or (va >> 12) & 511 == 0:
                l1 = take()
                if l2 is None or (va >> 21) & 511 == 0:
                    l2 = take()
                    if l3 is None or (va >> 30) & 511 == 0:
                        l3 = take()
                        tabs[l4][(va >> 39) & 511] = (l3 << 12) | LN_PROT
                    tabs[l3][(va >> 30) & 511] = (l2 << 12) | LN_PROT
                tabs[l2][(va >> 21) & 511] = (l1 << 12) | LN_PROT
            if initrd_pfn <= count < rd_end:
                mfn, rd_mfn = rd_mfn, rd_mfn + 1
            else:
                mfn, pfn = pfn, pfn + 1
            tabs[l1][(va >> 12) & 511] = (mfn << 12) | L1_PROT
        self.tabs = tabs
        # mark_pv_pt_pages_rdonly: the tables' own mappings lose RW
        for i in range(d.nr_pt_pages):
            va = d.vpt_start + i * PAGE
            self._l1(d, va, clear=_RW)

    def _l1(self, d: Dom0, va: int, clear: int = 0, add: int = 0) -> None:
        t = self.tabs
        e4 = int(t[d.table_mfns[0]][(va >> 39) & 511])
        e3 = int(t[e4 >> 12 & 0xFFFFFFFFFF][(va >> 30) & 511])
        e2 = int(t[e3 >> 12 & 0xFFFFFFFFFF][(va >> 21) & 511])
        l1 = t[e2 >> 12 & 0xFFFFFFFFFF]
        l1[(va >> 12) & 511] = (int(l1[(va >> 12) & 511]) & ~clear) | add

    def _load(self, d: Dom0) -> None:
        """``elf_load_binary`` through the new tables: each segment copied and its tail cleared — the pages
        written get the dirty bit; then ``start_info`` is cleared (dirty too)."""
        k = self.k
        for seg in k.segments:
            va = d.v_start + ((seg.paddr + k.virt_offset - d.v_start) & ((1 << 64) - 1))
            data = seg.data + bytes(seg.memsz - len(seg.data))
            for off in range(0, seg.memsz, PAGE):
                page_va = (va + off) & ~(PAGE - 1)
                chunk = data[off:off + PAGE]
                pfn = (page_va - d.v_start) >> 12
                d.mem.write(((d.alloc_spfn + pfn) << 12) + ((va + off) & (PAGE - 1)), chunk)
            for pva in range(va & ~(PAGE - 1), va + seg.memsz, PAGE):
                self._l1(d, pva, add=_D)
        self._l1(d, d.vstartinfo_start, add=_D)

    def _physmap(self, d: Dom0, start: int, end: int) -> list[int]:
        """``setup_pv_physmap``: tables and pages for the p2m at ``XEN_ELFNOTE_INIT_P2M`` from the heap
        (2 MiB pages where aligned and whole, 1 GiB ones with ``page1gb``); returns the mfns in allocation
        order (they become the next pfns)."""
        heap, out = d.heap, []
        l4 = self.tabs[d.table_mfns[0]]

        def page() -> int:
            mfn = heap.alloc(0, no_scrub=True)
            out.append(mfn)
            return mfn

        def table(entry_arr: np.ndarray, idx: int) -> np.ndarray:
            if not entry_arr[idx]:
                mfn = page()
                self.tabs[mfn] = np.zeros(512, dtype=np.uint64)
                d.table_mfns.append(mfn)
                entry_arr[idx] = (mfn << 12) | LN_PROT
            return self.tabs[int(entry_arr[idx]) >> 12 & 0xFFFFFFFFFF]

        while start < end:
            l3 = table(l4, (start >> 39) & 511)
            i3 = (start >> 30) & 511
            if not l3[i3] and self.page1gb and not start & ((1 << 30) - 1) and end >= start + (1 << 30):
                mfn = heap.alloc(18, no_scrub=True)
                out.extend(range(mfn, mfn + (1 << 18)))
                l3[i3] = (mfn << 12) | L1_PROT | _D | _PSE
                start += 1 << 30
                continue
            l2 = table(l3, i3)
            i2 = (start >> 21) & 511
            if not l2[i2] and not start & ((1 << 21) - 1) and end >= start + (1 << 21):
                mfn = heap.alloc(9, no_scrub=True)
                out.extend(range(mfn, mfn + 512))
                l2[i2] = (mfn << 12) | L1_PROT | _D | _PSE
                start += 1 << 21
                continue
            l1 = table(l2, i2)
            l1[(start >> 12) & 511] = (page() << 12) | L1_PROT | _D
            start = (start + PAGE) & ~(PAGE - 1)
        return out

    def _p2m(self, d: Dom0, initrd_pfn: int, initrd_mfn: int, rd_len: int, count: int, physmap: list[int]) -> None:
        p2m = d.p2m
        rd_pages = -(-rd_len // PAGE)
        pfns = np.arange(count, dtype=np.int64)
        mfns = pfns + d.alloc_spfn
        if rd_len:
            inrd = (pfns >= initrd_pfn) & (pfns < initrd_pfn + rd_pages)
            mfns[inrd] = initrd_mfn + pfns[inrd] - initrd_pfn
            mfns[pfns >= initrd_pfn + rd_pages] -= rd_pages
        p2m[:count] = mfns.astype(np.uint64)
        pfn = count
        p2m[pfn:pfn + len(physmap)] = np.array(physmap, dtype=np.uint64)
        pfn += len(physmap)
        chunks = Chunks(d.heap)
        while pfn < d.nr_pages:
            mfn, order = chunks.alloc_chunk(d.nr_pages - pfn)
            p2m[pfn:pfn + (1 << order)] = np.arange(mfn, mfn + (1 << order), dtype=np.uint64)
            pfn += 1 << order
        self.first_p2m_pfn = count
        raw = p2m.astype("<u8").tobytes()
        for off in range(0, len(raw), PAGE):  # the list's own pages, through the physmap mapping
            va = d.vphysmap_start + off
            d.mem.write(self._translate(d, va), raw[off:off + PAGE])

    def _translate(self, d: Dom0, va: int) -> int:
        t = d.table_mfns[0] << 12
        for shift in (39, 30, 21, 12):
            e = d.mem.read_u64(t + 8 * ((va >> shift) & 511)) if not self.tabs else \
                int(self.tabs[t >> 12][(va >> shift) & 511])
            if shift in (30, 21) and e & _PSE:
                return (e & 0xF_FFFF_FFFF_F000 & ~((1 << shift) - 1)) + (va & ((1 << shift) - 1))
            t = e & 0xF_FFFF_FFFF_F000
        return t + (va & 0xFFF)

    def _start_info(self, d: Dom0, rd_len: int, initrd_pfn: int, vinitrd_start: int, count: int,
                    nr_physmap: int) -> None:
        si = bytearray(PAGE)
        magic = f"xen-3.0-x86_64{'p' if self.k.pae else ''}".encode()
        si[0:len(magic)] = magic
        flags = SIF_PRIVILEGED | SIF_INITDOMAIN | (SIF_MOD_START_PFN if not vinitrd_start and rd_len else 0)
        flags |= XEN_PROCESSOR_PMBITS << 8
        fields = ((32, d.nr_pages, 8), (40, d.shared_info, 8), (48, flags, 4), (72, START_INFO_SIZE, 4),
                  (76, VGA_INFO_SIZE, 4), (88, d.vpt_start, 8), (96, d.nr_pt_pages, 8), (104, d.vphysmap_start, 8),
                  (112, (vinitrd_start or initrd_pfn) if rd_len else 0, 8), (120, rd_len, 8),
                  (1152, count, 8), (1160, nr_physmap, 8))
        for off, val, size in fields:
            si[off:off + size] = val.to_bytes(size, "little")
        cmd = self.cmdline.encode()[:1023]
        si[128:128 + len(cmd)] = cmd
        d.start_info = bytes(si[:START_INFO_SIZE])
        pa = self._translate(d, d.vstartinfo_start)
        d.mem.write(pa, bytes(si))
        for mfn, ents in self.tabs.items():
            if mfn == d.table_mfns[0]:
                ents = ents.copy()
                ents[LINEAR_SLOT] = (mfn << 12) | _P | _RW | _A | _D
            d.mem.write(mfn << 12, ents.astype("<u8").tobytes())
        self.tabs = {}
