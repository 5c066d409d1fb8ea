"""A 32-bit PV domain on a 32-bit Xen: host, hypervisor, the domain builder's start-of-day layout for an
i386 kernel, and the vCPU at its entry (tools/libxc xc_dom_x86.c ``count_pgtables``,
``setup_pgtables_x86_32``/``_32_pae``, ``start_info_x86_32``, xc_dom_boot.c @ Xen 3.1; public/xen.h
"start of day"; spec §5.2, §5.6).

The layout is the 64-bit builder's (``builder.layout``'s order, 512 KiB of padding, 4 MiB rounding) with the
32-bit table shapes: [L2][L1]… without PAE (an L2 covers 4 GiB, an L1 4 MiB), [L3][L2][L1]… with PAE (an
L2 covers 1 GiB, an L1 2 MiB). The p2m list holds 4-byte mfns (``unsigned long`` of a 32-bit guest) and
``start_info`` has 32-bit fields. Everything is mapped writable except the page tables; L3 entries carry P
only (PDPTE bits 2:1 are reserved). The vCPU starts in ring 1 with paging on, ``%esi`` = ``start_info``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from earlymm.arch.cpuid import CpuIdentity
from earlymm.arch.flags import Cr0, Cr4
from earlymm.arch.modes import Features
from earlymm.hw.cpu import Cpu
from earlymm.hw.events import ListTrace
from earlymm.hw.memory import PhysMem, Region, RegionMap, RegionType
from earlymm.hw.tlb import Tlb
from earlymm.platform.base import BootEntry, EntryProtocol
from earlymm.platform.xen.builder import GuestPhys, Segment, StartOfDay, _tables
from earlymm.platform.xen.consts import PAGE_SIZE, MmuExt
from earlymm.platform.xen.domain import XEN_BYTES, pv_cpuid
from earlymm.platform.xen.frames import MachineFrames
from earlymm.platform.xen.hypervisor import XenIdentity
from earlymm.platform.xen.x86_32 import Build32, Xen32

MiB = 1 << 20
L1_PROT = 0x1 | 0x2 | 0x20  # _PAGE_PRESENT|_PAGE_RW|_PAGE_ACCESSED
L2_PROT = L1_PROT | 0x40 | 0x4  # … |_PAGE_DIRTY|_PAGE_USER
L3_PROT = 0x1  # _PAGE_PRESENT
FLAT_RING1_CS, FLAT_RING1_DS = 0xE019, 0xE021  # FLAT_KERNEL_CS/_DS of a 32-bit guest (xen-x86_32.h)
SHARED_INFO = 0x10_3000
M2P_L1S, M2P32 = 0x30_0000, 0x40_0000  # Xen's L1 pages mapping the guest's m2p, and that m2p
MAX_HOST = 4 << 30  # PAE's CR3 (and so the L3) must lie below 4 GiB


@dataclass(frozen=True, slots=True)
class Kernel32:
    """What the builder reads from an i386 PV kernel's ELF notes: VIRT_BASE = PAGE_OFFSET, PADDR_OFFSET 0,
    the loadable range, ENTRY = startup_xen, and whether it is a PAE kernel (XEN_ELFNOTE_PAE_MODE)."""

    virt_base: int
    kstart: int
    kend: int
    entry: int
    pae: bool


@dataclass(frozen=True, slots=True)
class Domain32Config:
    nr_pages: int
    cmdline: str = "root=/dev/xvda1 ro console=hvc0"
    seed: int = 2007
    ident: XenIdentity = field(default_factory=lambda: XenIdentity(version="3.1.0", domid=1, vcpu=0, pcpu=0))
    features: Features = field(default_factory=lambda: Features(la57=False, pks=False, gbpages=False))
    identity: CpuIdentity = field(default_factory=CpuIdentity)


# struct start_info with 4-byte unsigned longs (public/xen.h)
SI32 = {"nr_pages": 32, "shared_info": 36, "flags": 40, "store_mfn": 44, "store_evtchn": 48, "console_mfn": 52,
        "console_evtchn": 56, "pt_base": 60, "nr_pt_frames": 64, "mfn_list": 68, "mod_start": 72, "mod_len": 76,
        "cmd_line": 80}


def layout32(kernel: Kernel32, nr_pages: int) -> StartOfDay:
    """``xc_dom_alloc_segment`` in order, then ``count_pgtables`` for the 32-bit shapes."""
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

    sod.mfn_list = alloc("phys2mach", nr_pages * 4).vstart
    sod.start_info = alloc("start info", PAGE_SIZE).vstart
    alloc("xenstore", PAGE_SIZE)
    alloc("console", PAGE_SIZE)
    bits = (32, 30, 21) if kernel.pae else (32, 22)
    levels = (3, 2, 1) if kernel.pae else (2, 1)
    extra = 1 + 128
    pages = extra
    while True:
        try_end = (end + pages * PAGE_SIZE) | ((1 << 22) - 1)
        if (try_end + 1 - kernel.virt_base) >> 12 > nr_pages:
            raise ValueError(f"a {nr_pages * PAGE_SIZE >> 20} MiB domain is too small for its initial mapping "
                             f"(it needs {(try_end + 1 - kernel.virt_base) >> 20} MiB)")
        counts = [_tables(kernel.virt_base, try_end, b) for b in bits]
        pages = sum(counts) + extra
        if end + pages * PAGE_SIZE <= try_end + 1:
            break
    pt = alloc("page tables", sum(counts) * PAGE_SIZE)
    sod.pt_base, sod.nr_pt_frames = pt.vstart, sum(counts)
    pfn = pt.pfn(kernel.virt_base)
    for level, n in zip(levels, counts, strict=True):
        sod.tables[level] = list(range(pfn, pfn + n))
        pfn += n
    sod.stack_top = alloc("boot stack", PAGE_SIZE).vend
    sod.v_end = try_end + 1
    return sod


def setup_pgtables32(phys: GuestPhys, sod: StartOfDay, pae: bool) -> None:
    """``setup_pgtables_x86_32(_pae)``: map [virt_base, v_end) to pfns 0…, the table pages read-only."""
    top = 3 if pae else 2
    n = 512 if pae else 1024
    walk = ((2, 30, 3), (1, 21, 511)) if pae else ((1, 22, 1023),)
    prot = {2: L3_PROT, 1: L2_PROT}
    pt0 = sod.tables[top][0]
    pt1 = pt0 + sod.nr_pt_frames
    nxt = {lvl: iter(pfns) for lvl, pfns in sod.tables.items()}
    pages = {p: np.zeros(n, dtype=np.uint64) for pfns in sod.tables.values() for p in pfns}
    current: dict[int, tuple[int, int]] = {}
    root = next(nxt[top])
    for va in range(sod.virt_base, sod.v_end, PAGE_SIZE):
        parent = root
        for level, shift, mask in walk:
            prefix = va >> shift
            cur = current.get(level)
            if cur is None or cur[0] != prefix:
                cur = (prefix, next(nxt[level]))
                current[level] = cur
                pages[parent][(va >> shift) & mask] = (phys.mfn(cur[1]) << 12) | prot[level]
            parent = cur[1]
        pfn = (va - sod.virt_base) >> 12
        pages[parent][(va >> 12) & (n - 1)] = (phys.mfn(pfn) << 12) | (L1_PROT & ~0x2 if pt0 <= pfn < pt1 else L1_PROT)
    for p, ents in pages.items():
        phys.write(p << 12, ents.astype("<u8" if pae else "<u4").tobytes())


def write_start_info32(phys: GuestPhys, sod: StartOfDay, nr_pages: int, cmdline: str, pae: bool,
                       p2m: np.ndarray) -> None:
    buf = bytearray(PAGE_SIZE)
    magic = b"xen-3.0-x86_32p" if pae else b"xen-3.0-x86_32"
    buf[:len(magic)] = magic
    vals = {"nr_pages": nr_pages, "shared_info": SHARED_INFO,
            "store_mfn": phys.mfn(sod.seg("xenstore").pfn(sod.virt_base)),
            "console_mfn": phys.mfn(sod.seg("console").pfn(sod.virt_base)),
            "pt_base": sod.pt_base, "nr_pt_frames": sod.nr_pt_frames, "mfn_list": sod.mfn_list}
    for name, val in vals.items():
        buf[SI32[name]:SI32[name] + 4] = val.to_bytes(4, "little")
    cmd = cmdline.encode()[:1023]
    buf[SI32["cmd_line"]:SI32["cmd_line"] + len(cmd)] = cmd
    phys.write(sod.start_info - sod.virt_base, bytes(buf))
    phys.write(sod.mfn_list - sod.virt_base, p2m.astype("<u4").tobytes())


class Xen32PvPlatform:
    """A 32-bit PV domain as the i386 kernel model sees its platform."""

    name = "xen-pv-32"

    def __init__(self, mem: PhysMem, cpu: Cpu, trace: ListTrace, xen: Xen32, cfg: Domain32Config,
                 sod: StartOfDay, p2m: np.ndarray) -> None:
        self.mem, self.cpu, self.trace, self.xen, self.cfg, self.sod, self.p2m = mem, cpu, trace, xen, cfg, sod, p2m

    @property
    def identity(self) -> CpuIdentity:
        return self.cfg.identity

    @property
    def entry(self) -> BootEntry:
        return BootEntry(EntryProtocol.XEN_PV_32, self.sod.seg("kernel").pfn(self.sod.virt_base) << 12,
                         self.sod.start_info, 0, 0)

    @property
    def dmi(self) -> tuple[str, ...]:
        return ()

    def memory_map(self) -> tuple[Region, ...]:
        return (Region(0, self.cfg.nr_pages * PAGE_SIZE, RegionType.RAM),)

    def ram(self) -> list[Region]:
        return list(self.memory_map())


def pv_cpuid32(leaf: int, subleaf: int, regs: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``pv_cpuid`` and no NX (leaf 0x80000001 EDX bit 20): the model's 32-bit Xen offers the guest no NX
    (whether Xen 3.1 did for 32-bit PAE PV guests is UNCONFIRMED; the 2.6.23 guest's ``set_nx`` would write
    EFER, which a ring-1 kernel cannot)."""
    a, b, c, d = pv_cpuid(leaf, subleaf, regs)
    return (a, b, c, d & ~(1 << 20)) if leaf == 0x8000_0001 else (a, b, c, d)


def _map_m2p(xen: Xen32, frames: MachineFrames, build: Build32) -> None:
    """Xen's read-only window on the m2p at MACH2PHYS_VIRT_START (= HYPERVISOR_VIRT_START): a 4-byte m2p
    and the L1 pages that map it, entered as Xen's slots of every top-level (or pae_xen) L2."""
    mem, nr = xen.mem, frames.nr_frames
    m2p = np.array([frames.get_gpfn_from_mfn(m) for m in range(nr)], dtype=np.uint64) & np.uint64(0xFFFF_FFFF)
    mem.write(M2P32, m2p.astype("<u4").tobytes())
    xen.m2p32 = M2P32
    pages = (nr * 4 + PAGE_SIZE - 1) // PAGE_SIZE
    per_l1 = 512 if build.pae else 1024
    for k in range((pages + per_l1 - 1) // per_l1):
        l1 = M2P_L1S + k * PAGE_SIZE
        n = min(per_l1, pages - k * per_l1)
        ents = (M2P32 + (k * per_l1 + np.arange(n, dtype=np.uint64)) * PAGE_SIZE) | np.uint64(0x21)  # P A, RO
        mem.write(l1, ents.astype("<u8" if build.pae else "<u4").tobytes())
        xen.types.xen_l2_slots[build.first_xen_l2_slot + k] = l1 | 0x63  # __PAGE_HYPERVISOR
    assert M2P32 + pages * PAGE_SIZE <= frames.m2p_base and M2P_L1S + PAGE_SIZE * 256 <= M2P32


def create_domain32(cfg: Domain32Config, kernel: Kernel32, trace: ListTrace) -> Xen32PvPlatform:
    """Host, a 32-bit Xen (PAE build for a PAE kernel) and one domain started at the kernel's entry."""
    build = Build32(kernel.pae)
    host = (XEN_BYTES + cfg.nr_pages * PAGE_SIZE + 64 * MiB + 2 * MiB - 1) & ~(2 * MiB - 1)
    if host > MAX_HOST:
        raise ValueError(f"a {cfg.nr_pages * PAGE_SIZE >> 20} MiB domain needs a host above 4 GiB: a 32-bit "
                         "Xen keeps the model's hosts below 4 GiB (PAE's CR3 is 32 bits)")
    mem = PhysMem(absent_zero=True, regions=RegionMap([Region(0, host, RegionType.RAM)]))
    cpu = Cpu(mem, cfg.features, trace=trace, tlb=Tlb(), identity=cfg.identity)
    cpu.cpuid_filter = pv_cpuid32
    frames = MachineFrames.create(mem, host, XEN_BYTES)
    xen = Xen32(mem, cpu, frames, trace, cfg.ident, build)
    cpu.delivery = xen
    frames.owner[SHARED_INFO >> 12] = cfg.ident.domid
    xen.shared_info = SHARED_INFO
    p2m = frames.populate(cfg.ident.domid, cfg.nr_pages, cfg.seed)
    _map_m2p(xen, frames, build)
    phys = GuestPhys(xen, p2m)
    sod = layout32(kernel, cfg.nr_pages)
    setup_pgtables32(phys, sod, kernel.pae)
    write_start_info32(phys, sod, cfg.nr_pages, cfg.cmdline, kernel.pae, p2m)
    boot_vcpu32(xen, cpu, phys, sod, kernel, build)
    return Xen32PvPlatform(mem, cpu, trace, xen, cfg, sod, p2m)


def boot_vcpu32(xen: Xen32, cpu: Cpu, phys: GuestPhys, sod: StartOfDay, kernel: Kernel32, build: Build32) -> None:
    """The toolstack pins the top-level table (L3 with PAE, L2 without); it becomes the base pointer and the
    vCPU starts in 32-bit ring 1 at the entry, ``%esi`` = ``start_info``."""
    top = build.paging_levels
    root = phys.mfn(sod.tables[top][0])
    pin = MmuExt.PIN_L3_TABLE if build.pae else MmuExt.PIN_L2_TABLE
    if xen.mmuext_op([(pin, root)]):
        raise ValueError("the domain builder's tables did not validate: " + "; ".join(xen.console[-3:]))
    cpu.write_cr4(int(Cr4.PAE) if build.pae else 0)
    cpu.write_cr0(int(Cr0.PE | Cr0.ET | Cr0.WP | Cr0.PG))
    if xen.mmuext_op([(MmuExt.NEW_BASEPTR, root)]):
        raise ValueError("the domain builder's top-level table cannot be the base pointer")
    cpu.regs.cpl = 1  # a 32-bit PV kernel runs in ring 1
    cpu.regs.rsp = sod.stack_top
    cpu.far_jump(kernel.entry, long_mode_code=False, cs=FLAT_RING1_CS)
