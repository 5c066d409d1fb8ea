"""A 64-bit PV domain on the simulated Xen, as the kernel model sees its platform (``platform/base.py``).

Composition: host memory (machine frames) → the CPU, whose faults go to Xen → the hypervisor with its
frame table and m2p → the domain builder's start-of-day layout → the vCPU at the kernel's entry. The
guest's "physical" memory is pseudo-physical: ``memory_map`` describes the domain's pfns, never the
host's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from earlymm.arch.cpuid import CpuIdentity
from earlymm.arch.modes import Features
from earlymm.hw.cpu import Cpu
from earlymm.hw.events import ListTrace
from earlymm.hw.memory import PhysMem, Region, RegionMap, RegionType
from earlymm.hw.tlb import Tlb
from earlymm.platform.base import BootEntry, EntryProtocol
from earlymm.platform.xen import builder
from earlymm.platform.xen.consts import DOMID_XEN, MACH2PHYS_VIRT_START, PAGE_SIZE, XEN_FIRST_SLOT
from earlymm.platform.xen.frames import MachineFrames
from earlymm.platform.xen.hypervisor import Xen, XenIdentity

MiB = 1 << 20
XEN_BYTES = 64 * MiB  # Xen's image, heap and the m2p at the bottom of host memory
IDLE_L4, RO_MPT_L3, RO_MPT_L2, SHARED_INFO = 0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000

# CPUID as Xen 4.2's pv_cpuid levels it for a PV guest: no VME, PSE, PGE, PSE36 (leaf 1 EDX), no 1 GiB
# pages (leaf 0x80000001 EDX), and the hypervisor bit (leaf 1 ECX).
_LEAF1_EDX_CLEAR = (1 << 1) | (1 << 3) | (1 << 13) | (1 << 17)


def pv_cpuid(leaf: int, subleaf: int, regs: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    a, b, c, d = regs
    if leaf == 1:
        return a, b, c | (1 << 31), d & ~_LEAF1_EDX_CLEAR
    if leaf == 0x8000_0001:
        return a, b, c, d & ~(1 << 26)
    return regs


@dataclass(frozen=True, slots=True)
class DomainConfig:
    nr_pages: int
    cmdline: str = "root=/dev/xvda1 ro console=hvc0 earlyprintk=xen"
    ramdisk_size: int = 0
    host_bytes: int = 0  # 0: the domain's memory plus Xen's 64 MiB and some slack
    seed: int = 2013  # the shuffle of the domain's machine frames
    ident: XenIdentity = field(default_factory=XenIdentity)
    features: Features = field(default_factory=lambda: Features(la57=False, pks=False))
    identity: CpuIdentity = field(default_factory=CpuIdentity)


class XenPvPlatform:
    """A PV domain's view: memory is machine memory, the entry is the Xen PV one with ``start_info``."""

    name = "xen-pv"

    def __init__(self, mem: PhysMem, cpu: Cpu, trace: ListTrace, xen: Xen, cfg: DomainConfig,
                 sod: builder.StartOfDay, p2m: np.ndarray) -> None:
        self.mem, self.cpu, self.trace, self.xen, self.cfg, self.sod, self.p2m = mem, cpu, trace, xen, cfg, sod, p2m

    @property
    def identity(self) -> CpuIdentity:
        return self.cfg.identity

    @property
    def entry(self) -> BootEntry:
        rd = next((s for s in self.sod.segments if s.name == "ramdisk"), None)
        kernel = self.sod.seg("kernel")
        return BootEntry(EntryProtocol.XEN_PV_64, kernel.pfn(self.sod.virt_base) << 12, self.sod.start_info,
                         (rd.pfn(self.sod.virt_base) << 12) if rd else 0, self.cfg.ramdisk_size)

    @property
    def dmi(self) -> tuple[str, ...]:
        return ()  # a PV domU has no SMBIOS tables

    def memory_map(self) -> tuple[Region, ...]:
        return (Region(0, self.cfg.nr_pages * PAGE_SIZE, RegionType.RAM),)

    def ram(self) -> list[Region]:
        return list(self.memory_map())


def _xen_slots(mem: PhysMem, frames: MachineFrames) -> dict[int, int]:
    """Xen's slot 256 in every guest L4: the m2p, read-only and user-accessible, at MACH2PHYS_VIRT_START."""
    nr_2m = (frames.nr_frames * 8 + (2 * MiB) - 1) // (2 * MiB)
    l2 = np.zeros(512, dtype=np.uint64)
    for i in range(nr_2m):
        l2[i] = (frames.m2p_base + i * 2 * MiB) | 0x80 | 0x25 | (1 << 63)  # P US A PS NX, read-only
    mem.write(RO_MPT_L2, l2.astype("<u8").tobytes())
    mem.write_u64(RO_MPT_L3, RO_MPT_L2 | 0x25)
    assert MACH2PHYS_VIRT_START >> 39 & 511 == XEN_FIRST_SLOT
    return {XEN_FIRST_SLOT: RO_MPT_L3 | 0x25}


def create_domain(cfg: DomainConfig, kernel: builder.PvKernel, trace: ListTrace) -> XenPvPlatform:
    """Host, hypervisor and one domain built and started at the kernel's entry."""
    host = cfg.host_bytes or ((XEN_BYTES + cfg.nr_pages * PAGE_SIZE + 64 * MiB + 2 * MiB - 1) & ~(2 * MiB - 1))
    if host >> 12 < cfg.nr_pages + (XEN_BYTES >> 12):
        raise ValueError(f"a host of {host >> 20} MiB cannot hold Xen and a {cfg.nr_pages * PAGE_SIZE >> 20} MiB "
                         "domain")
    mem = PhysMem(absent_zero=True, regions=RegionMap([Region(0, host, RegionType.RAM)]))
    cpu = Cpu(mem, cfg.features, trace=trace, tlb=Tlb(), identity=cfg.identity)
    cpu.cpuid_filter = pv_cpuid
    frames = MachineFrames.create(mem, host, XEN_BYTES)
    xen = Xen(mem, cpu, frames, trace, cfg.ident)
    cpu.delivery = xen
    xen.types.xen_l4_slots = _xen_slots(mem, frames)
    mem.write_u64(IDLE_L4 + 8 * XEN_FIRST_SLOT, xen.types.xen_l4_slots[XEN_FIRST_SLOT])
    frames.owner[SHARED_INFO >> 12] = cfg.ident.domid  # share_xen_page_with_guest
    xen.shared_info = SHARED_INFO
    assert int(frames.owner[IDLE_L4 >> 12]) == DOMID_XEN
    p2m = frames.populate(cfg.ident.domid, cfg.nr_pages, cfg.seed)
    phys = builder.GuestPhys(xen, p2m)
    sod = builder.layout(kernel, cfg.nr_pages, cfg.ramdisk_size)
    kernel.install(phys)
    builder.setup_pgtables(phys, sod)
    rd = next((s for s in sod.segments if s.name == "ramdisk"), None)
    builder.write_start_info(phys, sod, cfg.nr_pages, SHARED_INFO, cfg.cmdline, rd, p2m)
    builder.boot_vcpu(xen, cpu, phys, sod, kernel, IDLE_L4)
    return XenPvPlatform(mem, cpu, trace, xen, cfg, sod, p2m)
