"""The domain builder: a 64-bit PV domain's start-of-day layout (tools/libxc xc_dom_core.c, xc_dom_x86.c
``count_pgtables``/``setup_pgtables_x86_64``, xc_dom_boot.c @ Xen 4.2; public/xen.h "start of day"; spec
§5.2).

One virtual region from the kernel's ``virt_base`` maps the domain's first pseudo-physical frames 1:1:
the kernel image, the ramdisk, the p2m list, ``start_info``, the xenstore and console pages, the bootstrap
page tables ([L4][L3][L2][L1]… as the toolstack builds them) and the boot stack, padded by at least
512 KiB and rounded up to 4 MiB. Everything is mapped writable except the page tables themselves. The
toolstack pins the L4 and starts the vCPU in ring 3 at the kernel's entry with ``%rsi`` = ``start_info``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.hw.cpu import Cpu
from earlymm.platform.xen import consts as xc
from earlymm.platform.xen.consts import PAGE_SIZE, MmuExt
from earlymm.platform.xen.hypervisor import FLAT_KERNEL_CS, Xen

L1_PROT = 0x1 | 0x2 | 0x20 | 0x4  # _PAGE_PRESENT|_PAGE_RW|_PAGE_ACCESSED|_PAGE_USER
LN_PROT = L1_PROT | 0x40  # … |_PAGE_DIRTY for L2–L4


@dataclass(frozen=True, slots=True)
class PvKernel:
    """What the builder reads from a PV kernel's ELF notes and program headers."""

    virt_base: int  # XEN_ELFNOTE_VIRT_BASE
    kstart: int  # the loadable segments' virtual range
    kend: int
    entry: int  # XEN_ELFNOTE_ENTRY: startup_xen
    hypercall_page: int  # XEN_ELFNOTE_HYPERCALL_PAGE
    install: Callable[[GuestPhys], None]  # copies the image's initialised data into the domain


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    vstart: int
    vend: int

    def pfn(self, virt_base: int) -> int:
        return (self.vstart - virt_base) >> 12


@dataclass
class StartOfDay:
    """The builder's result: where everything is, in the guest's virtual and pseudo-physical terms."""

    virt_base: int
    segments: list[Segment] = field(default_factory=list)
    v_end: int = 0
    pt_base: int = 0  # VA of the L4
    nr_pt_frames: int = 0
    tables: dict[int, list[int]] = field(default_factory=dict)  # level → pfns of the bootstrap tables
    start_info: int = 0
    mfn_list: int = 0
    stack_top: int = 0

    def seg(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)


class GuestPhys:
    """The domain's pseudo-physical memory as the builder (and the kernel's loader hook) writes it: each
    page goes to the machine frame the p2m names."""

    def __init__(self, xen: Xen, p2m: np.ndarray) -> None:
        self.xen, self.p2m = xen, p2m

    def mfn(self, pfn: int) -> int:
        return int(self.p2m[pfn])

    def write(self, pa: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, PAGE_SIZE - (pa & 0xFFF))
            self.xen.mem.write((self.mfn(pa >> 12) << 12) | (pa & 0xFFF), data[pos:pos + n])
            pa, pos = pa + n, pos + n

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, value.to_bytes(8, "little"))


def _tables(start: int, end: int, bits: int) -> int:
    """``nr_page_tables``: tables of a level whose tables each cover ``1 << bits`` over [start, end]."""
    if bits >= 64:
        return 1
    mask = (1 << bits) - 1
    return (((end | mask) - (start & ~mask)) >> bits) + 1


def layout(kernel: PvKernel, nr_pages: int, ramdisk_size: int) -> StartOfDay:
    """``xc_dom_alloc_segment`` in order, then ``count_pgtables`` (48, 39, 30, 21) with 512 KiB padding."""
    sod = StartOfDay(kernel.virt_base)
    end = kernel.kend
    sod.segments.append(Segment("kernel", kernel.kstart, kernel.kend))

    def alloc(name: str, size: int) -> Segment:
        nonlocal end
        end = (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        seg = Segment(name, end, end + ((size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)))
        end = seg.vend
        sod.segments.append(seg)
        return seg

    if ramdisk_size:
        alloc("ramdisk", ramdisk_size)
    sod.mfn_list = alloc("phys2mach", nr_pages * 8).vstart
    sod.start_info = alloc("start info", PAGE_SIZE).vstart
    alloc("xenstore", PAGE_SIZE)
    alloc("console", PAGE_SIZE)
    extra = 1 + 128  # the boot stack and 512 KiB of padding
    pages = extra
    while True:
        try_end = (end + pages * PAGE_SIZE) | ((1 << 22) - 1)
        if (try_end + 1 - kernel.virt_base) >> 12 > nr_pages:
            raise ValueError(f"a {nr_pages * PAGE_SIZE >> 20} MiB domain is too small for its initial mapping "
                             f"(it needs {(try_end + 1 - kernel.virt_base) >> 20} MiB)")
        counts = [_tables(kernel.virt_base, try_end, b) for b in (48, 39, 30, 21)]
        pages = sum(counts) + extra
        if end + pages * PAGE_SIZE <= try_end + 1:
            break
    pt = alloc("page tables", sum(counts) * PAGE_SIZE)
    sod.pt_base, sod.nr_pt_frames = pt.vstart, sum(counts)
    pfn = pt.pfn(kernel.virt_base)
    for level, n in zip((4, 3, 2, 1), counts, strict=True):
        sod.tables[level] = list(range(pfn, pfn + n))
        pfn += n
    sod.stack_top = alloc("boot stack", PAGE_SIZE).vend
    sod.v_end = try_end + 1
    return sod


def setup_pgtables(phys: GuestPhys, sod: StartOfDay) -> None:
    """``setup_pgtables_x86_64``: map [virt_base, v_end) to pfns 0…, the table pages read-only."""
    base = sod.virt_base
    pt0 = sod.tables[4][0]
    pt1 = pt0 + sod.nr_pt_frames
    nxt = {lvl: iter(pfns) for lvl, pfns in sod.tables.items()}
    current: dict[int, tuple[int, int]] = {}  # level → (prefix, pfn) of the table in use
    pages: dict[int, np.ndarray] = {p: np.zeros(512, dtype=np.uint64) for pfns in sod.tables.values() for p in pfns}
    l4 = next(nxt[4])
    for va in range(base, sod.v_end, PAGE_SIZE):
        parent = l4
        for level, shift in ((3, 39), (2, 30), (1, 21)):
            prefix = va >> shift  # the table at this level that maps va
            cur = current.get(level)
            if cur is None or cur[0] != prefix:
                cur = (prefix, next(nxt[level]))
                current[level] = cur
                pages[parent][(va >> shift) & 511] = (phys.mfn(cur[1]) << 12) | LN_PROT
            parent = cur[1]
        pfn = (va - base) >> 12
        prot = L1_PROT & ~0x2 if pt0 <= pfn < pt1 else L1_PROT
        pages[parent][(va >> 12) & 511] = (phys.mfn(pfn) << 12) | prot
    for p, ents in pages.items():
        phys.write(p << 12, ents.astype("<u8").tobytes())


def write_start_info(phys: GuestPhys, sod: StartOfDay, nr_pages: int, shared_info: int, cmdline: str,
                     ramdisk: Segment | None, p2m: np.ndarray) -> None:
    si = (sod.start_info - sod.virt_base)
    buf = bytearray(PAGE_SIZE)
    buf[xc.SI_MAGIC:xc.SI_MAGIC + 14] = b"xen-3.0-x86_64"
    for off, val in ((xc.SI_NR_PAGES, nr_pages), (xc.SI_SHARED_INFO, shared_info),
                     (xc.SI_STORE_MFN, phys.mfn(sod.seg("xenstore").pfn(sod.virt_base))),
                     (xc.SI_CONSOLE_MFN, phys.mfn(sod.seg("console").pfn(sod.virt_base))),
                     (xc.SI_PT_BASE, sod.pt_base), (xc.SI_NR_PT_FRAMES, sod.nr_pt_frames),
                     (xc.SI_MFN_LIST, sod.mfn_list),
                     (xc.SI_MOD_START, ramdisk.vstart if ramdisk else 0),
                     (xc.SI_MOD_LEN, ramdisk.vend - ramdisk.vstart if ramdisk else 0)):
        buf[off:off + 8] = val.to_bytes(8, "little")
    cmd = cmdline.encode()[:xc.MAX_GUEST_CMDLINE - 1]
    buf[xc.SI_CMD_LINE:xc.SI_CMD_LINE + len(cmd)] = cmd
    phys.write(si, bytes(buf))
    phys.write(sod.mfn_list - sod.virt_base, p2m.astype("<u8").tobytes())


def boot_vcpu(xen: Xen, cpu: Cpu, phys: GuestPhys, sod: StartOfDay, kernel: PvKernel, idle_l4: int) -> None:
    """``xc_dom_boot_image``: the toolstack pins the L4; ``arch_set_info_guest`` takes it as the base
    pointer (a type reference of its own) and the vCPU starts in 64-bit ring 3 at the entry. Xen itself
    already runs in 64-bit mode on its idle page table (``idle_l4``, below 4 GiB)."""
    l4 = phys.mfn(sod.tables[4][0])
    if xen.mmuext_op([(MmuExt.PIN_L4_TABLE, l4)]):
        raise ValueError("the domain builder's tables did not validate: " + "; ".join(xen.console[-3:]))
    cpu.write_cr4(int(Cr4.PAE | Cr4.PGE) if cpu.features.pge else int(Cr4.PAE))
    cpu.write_efer(int(Efer.LME | Efer.NXE) if cpu.features.nx else int(Efer.LME))
    cpu.write_cr3(idle_l4)
    cpu.write_cr0(int(Cr0.PE | Cr0.ET | Cr0.WP | Cr0.PG))
    cpu.regs.cs_l = True  # Xen's own code segment (its boot path into long mode is not modelled)
    if xen.mmuext_op([(MmuExt.NEW_BASEPTR, l4)]):
        raise ValueError("the domain builder's L4 cannot be the base pointer")
    cpu.regs.cpl = 3  # a 64-bit PV kernel runs in ring 3
    cpu.regs.rsp = sod.stack_top
    cpu.far_jump(kernel.entry, long_mode_code=True, cs=FLAT_KERNEL_CS)
