"""The PC under a 32-bit kernel: the same machine as ``pc.py`` (RAM per an e820 map, the BIOS data area,
the zero page, the command line, a ramdisk), handed over the way 2.6.21's bzImage reaches ``startup_32``:
protected mode with paging off, flat 4 GiB ``__BOOT_CS``/``__BOOT_DS`` segments, interrupts off, no usable
IDT, %esi = the real-mode data (``boot_params``) and EIP = 1 MiB, where the decompressor left the kernel.
The model's loader stands for the firmware, the real-mode setup code and the decompressor together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from earlymm.arch.flags import Cr0
from earlymm.hw.cpu import Cpu
from earlymm.hw.events import ListTrace
from earlymm.hw.memory import PhysMem, RegionMap
from earlymm.hw.tlb import Tlb
from earlymm.platform import bootparams as bp
from earlymm.platform.base import BootEntry, EntryProtocol
from earlymm.platform.pc import E820_TYPES, MachineConfig, PcPlatform, validate

INITRD_ADDR_MAX = 0x37FF_FFFF  # the 2.6.21 i386 setup header's initrd_addr_max
BOOT_CS = 0x10


@dataclass
class Pc32Platform(PcPlatform):
    """A PC after the 32-bit hand-over: the ``Platform`` the i386 kernel boots on."""

    @property
    def entry(self) -> BootEntry:
        c = self.config
        return BootEntry(EntryProtocol.BOOT_PARAMS_32, c.kernel_at, c.boot_params_at, self.ramdisk_at,
                         c.ramdisk_size)


def load_i386(cfg: MachineConfig, image_size: int, *, trace: ListTrace | None = None) -> Pc32Platform:
    """Set up memory and CPU as the 32-bit hand-over leaves them at ``startup_32``."""
    if cfg.ramdisk_at is None:  # boot loaders keep the initrd below the kernel's initrd_addr_max
        cfg = dataclasses.replace(cfg, ramdisk_at=cfg.default_ramdisk_at(image_size, INITRD_ADDR_MAX + 1))
    assert cfg.ramdisk_at is not None
    if cfg.ramdisk_at + cfg.ramdisk_size > INITRD_ADDR_MAX + 1:
        raise ValueError(f"ramdisk [{cfg.ramdisk_at:#x}, {cfg.ramdisk_at + cfg.ramdisk_size:#x}) ends above the "
                         f"kernel's initrd_addr_max {INITRD_ADDR_MAX:#x}")
    validate(cfg, image_size)
    mem = PhysMem(absent_zero=True, regions=RegionMap(cfg.e820))
    trace = trace or ListTrace(enabled=False)
    cpu = Cpu(mem, cfg.features, trace=trace, tlb=Tlb(), identity=cfg.identity)
    bp.write_boot_params(mem, cfg.boot_params_at, cfg.e820, E820_TYPES, cmdline_at=cfg.cmdline_at,
                         ramdisk_at=cfg.ramdisk_at, ramdisk_size=cfg.ramdisk_size,
                         setup_data_at=cfg.setup_data_place(image_size))
    base_kib, ebda = cfg.bda()
    mem.write_u16(bp.BDA_BASE_MEM_KIB, base_kib)
    mem.write_u16(bp.BDA_EBDA_SEGMENT, ebda)
    mem.write(cfg.cmdline_at, cfg.cmdline.encode() + b"\0")
    bp.write_ramdisk(mem, cfg.ramdisk_at, cfg.ramdisk_size, cfg.identity)
    cpu.write_cr0(int(Cr0.PE | Cr0.ET))
    cpu.lidt(0, 0)  # no usable IDT: an exception now ends in a triple fault, as on hardware
    cpu.far_jump(cfg.kernel_at, long_mode_code=False, cs=BOOT_CS)
    return Pc32Platform(mem, cpu, trace, cfg, cfg.ramdisk_at)
