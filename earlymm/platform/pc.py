"""The PC under the kernel: RAM per an e820 map, and a 64-bit boot loader that hands over to the
kernel as Linux's boot protocol says (spec §3.1): boot_params, command line, ramdisk, and identity page
tables covering the kernel, with the CPU in 64-bit mode at the kernel's physical entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earlymm.arch.cpuid import CpuIdentity
from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.arch.modes import Features, PagingMode
from earlymm.hw.cpu import Cpu
from earlymm.hw.events import ListTrace
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import PhysMem, Region, RegionMap, RegionType
from earlymm.hw.tlb import Tlb
from earlymm.platform import bootparams as bp
from earlymm.platform.base import BootEntry, EntryProtocol

GiB = 1 << 30
MiB = 1 << 20
E820_TYPES = {RegionType.RAM: 1, RegionType.RESERVED: 2, RegionType.ACPI: 3, RegionType.NVS: 4,
              RegionType.UNUSABLE: 5}


def pc_e820(mem_size: int) -> list[Region]:
    """A QEMU-like PC: 639 KiB low RAM, the VGA/BIOS hole, RAM from 1 MiB to the PCI hole at 3 GiB,
    the rest of RAM above 4 GiB, and the BIOS ROM just below 4 GiB."""
    if mem_size < 2 * MiB:
        raise ValueError("a PC needs at least 2 MiB of RAM")
    low = min(mem_size, 3 * GiB)
    regions = [Region(0, 0x9FC00, RegionType.RAM), Region(0x9FC00, 0xA0000, RegionType.RESERVED),
               Region(0xF0000, 0x10_0000, RegionType.RESERVED), Region(0x10_0000, low, RegionType.RAM),
               Region(0xFFFC_0000, 0x1_0000_0000, RegionType.RESERVED)]
    if mem_size > low:
        regions.append(Region(4 * GiB, 4 * GiB + mem_size - low, RegionType.RAM))
    return regions


# What QEMU's SMBIOS tables give dmi_setup() to keep (BIOS vendor/version/date, system and board fields):
# the strings of a pc (i440FX) machine with SeaBIOS 1.16.2, as the mid-boot fixtures' DMI line shows.
DMI_QEMU_PC = ("SeaBIOS", "1.16.2-debian-1.16.2-1", "04/01/2014", "QEMU", "Standard PC (i440FX + PIIX, 1996)",
               "pc-i440fx-7.2", "QEMU", "pc-i440fx-7.2")


@dataclass(frozen=True)
class MachineConfig:
    """Everything about the machine and the boot loader's choices (issue 3 §1)."""

    e820: tuple[Region, ...] = field(default_factory=lambda: tuple(pc_e820(4 * GiB)))
    kernel_at: int = 16 * MiB
    boot_params_at: int = 0x1_4000
    cmdline: str = "root=/dev/sda1 ro console=ttyS0 earlyprintk=serial"
    cmdline_at: int = 0x2_0000
    ramdisk_at: int | None = None  # None: near the top of RAM below 2 GiB, as boot loaders place it
    ramdisk_size: int = 16 * MiB
    features: Features = field(default_factory=lambda: Features(la57=False, pks=False))
    identity: CpuIdentity = field(default_factory=CpuIdentity)
    pgtables_at: int = 0x6_0000  # the loader's identity tables: below 4 GiB, since its CR3 load is 32-bit
    setup_data_at: int | None = None  # SETUP_E820_EXT data, when the map has more than 128 entries
    bda_base_kib: int | None = None  # BDA 0x413, base memory in KiB (None: from the e820 map, as SeaBIOS)
    ebda_segment: int | None = None  # BDA 0x40e (None: the reserved block right below 640 KiB, if any)
    dmi: tuple[str, ...] = DMI_QEMU_PC  # the SMBIOS identification strings setup_arch keeps in BRK
    loader_paging: int = 4  # the paging mode the 64-bit boot loader hands over in: 4- or 5-level
    efi_loader: str = ""  # boot_params.efi_info.efi_loader_signature ("EL64"/"EL32" on an EFI boot)

    def setup_data_place(self, image_size: int) -> int:
        """Where the loader puts the e820 setup data: low memory if it fits below the EBDA, else the first
        page after the kernel image."""
        if self.setup_data_at is not None:
            return self.setup_data_at
        if bp.e820_ext_size(self.e820, E820_TYPES) <= 0x1_F000:
            return 0x8_0000
        return (self.kernel_at + image_size + 0xFFF) & ~0xFFF

    def bda(self) -> tuple[int, int]:
        """(base memory KiB, EBDA segment) the firmware leaves in the BIOS data area."""
        low = next((r for r in sorted(self.e820, key=lambda r: r.start)
                    if r.kind is RegionType.RAM and r.start == 0), None)
        base = self.bda_base_kib if self.bda_base_kib is not None else ((low.end >> 10) if low else 0)
        ebda = self.ebda_segment
        if ebda is None:
            ebda = (low.end >> 4) if low and any(r.start == low.end and r.kind is not RegionType.RAM
                                                  for r in self.e820) else 0
        return min(base, 0xFFFF), ebda

    def ram(self) -> list[Region]:
        return [r for r in self.e820 if r.kind is RegionType.RAM]

    def in_ram(self, start: int, end: int) -> bool:
        return any(r.start <= start and end <= r.end for r in self.ram())

    def default_ramdisk_at(self, image_size: int, limit: int = 0x8000_0000) -> int:
        """The highest 1 MiB-aligned spot below ``limit`` = initrd_addr_max + 1 (2 GiB for v3.9) clear of
        the kernel."""
        k0, k1 = self.kernel_at, self.kernel_at + image_size
        for r in sorted(self.ram(), key=lambda r: -r.end):
            top = min(r.end, limit) & ~0xFFFFF
            while top - self.ramdisk_size >= r.start:
                start = (top - self.ramdisk_size) & ~0xFFFFF
                if start < r.start:
                    break
                if start < k1 and k0 < start + self.ramdisk_size:
                    top = k0 & ~0xFFFFF
                    continue
                return start
        where = f"{limit >> 30} GiB" if not limit % (1 << 30) else f"{limit >> 20} MiB"
        raise ValueError(f"no room for the ramdisk below {where}: give --ramdisk ADDR:SIZE")


@dataclass
class PcPlatform:
    """A PC after its 64-bit boot loader ran: the ``Platform`` the native x86-64 kernel boots on."""

    mem: PhysMem
    cpu: Cpu
    trace: ListTrace
    config: MachineConfig
    ramdisk_at: int
    name: str = "pc"

    @property
    def identity(self) -> CpuIdentity:
        return self.config.identity

    @property
    def dmi(self) -> tuple[str, ...]:
        return self.config.dmi

    @property
    def entry(self) -> BootEntry:
        c = self.config
        return BootEntry(EntryProtocol.BOOT_PARAMS_64, c.kernel_at, c.boot_params_at, self.ramdisk_at,
                         c.ramdisk_size)

    def memory_map(self) -> tuple[Region, ...]:
        return self.config.e820

    def ram(self) -> list[Region]:
        return self.config.ram()


def validate(cfg: MachineConfig, image_size: int) -> None:
    """Reject machines a boot loader could not set up; each message is one line for the CLI.
    ``image_size`` is what the loader reserves for the kernel (init_size: the decompressed image and
    the decompressor working beyond it)."""
    if cfg.loader_paging not in (4, 5):
        raise ValueError(f"a 64-bit boot loader hands over in 4- or 5-level paging, not {cfg.loader_paging}")
    if cfg.loader_paging == 5 and not cfg.features.la57:
        raise ValueError("a loader cannot hand over in 5-level paging on a CPU without LA57 (CPUID.7.0:ECX[16])")
    for name, word in (("BDA base memory (KiB)", cfg.bda_base_kib), ("EBDA segment", cfg.ebda_segment)):
        if word is not None and not 0 <= word <= 0xFFFF:
            raise ValueError(f"{name} {word:#x}: the BIOS data area holds a 16-bit word (0..0xffff)")
    if cfg.efi_loader not in ("", "EL32", "EL64"):
        raise ValueError(f"EFI loader signature {cfg.efi_loader!r}: EL32 or EL64")
    rm = RegionMap()
    for r in cfg.e820:
        rm.add(r)  # raises on overlaps
    if not cfg.ram():
        raise ValueError("the e820 map has no RAM")
    k0, k1 = cfg.kernel_at, cfg.kernel_at + image_size
    if not cfg.in_ram(k0, k1):
        raise ValueError(f"the kernel image [{k0:#x}, {k1:#x}) is not inside RAM")
    if cfg.ramdisk_at is not None:
        r0, r1 = cfg.ramdisk_at, cfg.ramdisk_at + cfg.ramdisk_size
        if r0 % 4096:
            raise ValueError(f"ramdisk address {r0:#x} is not page aligned")
        if r0 < k1 and k0 < r1:
            raise ValueError(f"ramdisk [{r0:#x}, {r1:#x}) overlaps the kernel [{k0:#x}, {k1:#x})")
        if not cfg.in_ram(r0, r1):
            raise ValueError(f"ramdisk [{r0:#x}, {r1:#x}) is not inside RAM")
    for name, at, size in (("boot_params", cfg.boot_params_at, 4096),
                           ("command line", cfg.cmdline_at, len(cfg.cmdline) + 1)):
        if not cfg.in_ram(at, at + size):
            raise ValueError(f"{name} at {at:#x} is not inside RAM")
        if at < k1 and k0 < at + size:
            raise ValueError(f"{name} at {at:#x} overlaps the kernel")
    # Everything the loader places must be disjoint, or one overwrites another (a ramdisk over
    # boot_params leaves the kernel an e820 map without RAM).
    r0 = cfg.ramdisk_at if cfg.ramdisk_at is not None else cfg.default_ramdisk_at(image_size)
    bp_at = cfg.boot_params_at
    ext, sd_at = bp.e820_ext_size(cfg.e820, E820_TYPES), cfg.setup_data_place(image_size)
    if ext and not cfg.in_ram(sd_at, sd_at + ext):
        raise ValueError(f"the e820 map's {ext} bytes of SETUP_E820_EXT data at {sd_at:#x} are not inside RAM")
    placed = [("the ramdisk", r0, r0 + cfg.ramdisk_size), ("boot_params", bp_at, bp_at + 4096),
              ("the e820 setup data", sd_at, sd_at + ext),
              ("the command line", cfg.cmdline_at, cfg.cmdline_at + len(cfg.cmdline) + 1),
              ("the boot loader's page tables", cfg.pgtables_at, cfg.pgtables_at + 32 * 4096)]
    for i, (a, a0, a1) in enumerate(placed):
        for b, b0, b1 in placed[i + 1:]:
            if a0 < b1 and b0 < a1:
                raise ValueError(f"{a} [{a0:#x}, {a1:#x}) overlaps {b} [{b0:#x}, {b1:#x})")
    if len(cfg.cmdline) >= 2048:
        raise ValueError("command line longer than COMMAND_LINE_SIZE (2048)")


def load(cfg: MachineConfig, image_size: int, *, trace: ListTrace | None = None, entry: int | None = None
         ) -> PcPlatform:
    """Set up memory and CPU as a 64-bit boot loader leaves them at ``startup_64`` (spec §3.1)."""
    validate(cfg, image_size)
    regions = RegionMap(cfg.e820)
    mem = PhysMem(absent_zero=True, regions=regions)
    trace = trace or ListTrace(enabled=False)
    cpu = Cpu(mem, cfg.features, trace=trace, tlb=Tlb(), identity=cfg.identity)
    ramdisk_at = cfg.ramdisk_at if cfg.ramdisk_at is not None else cfg.default_ramdisk_at(image_size)
    bp.write_boot_params(mem, cfg.boot_params_at, cfg.e820, E820_TYPES, cmdline_at=cfg.cmdline_at,
                         ramdisk_at=ramdisk_at, ramdisk_size=cfg.ramdisk_size,
                         setup_data_at=cfg.setup_data_place(image_size), efi_loader=cfg.efi_loader)
    base_kib, ebda = cfg.bda()
    mem.write_u16(bp.BDA_BASE_MEM_KIB, base_kib)  # the firmware's BIOS data area (SeaBIOS fills both)
    mem.write_u16(bp.BDA_EBDA_SEGMENT, ebda)
    mem.write(cfg.cmdline_at, cfg.cmdline.encode() + b"\0")
    bp.write_ramdisk(mem, ramdisk_at, cfg.ramdisk_size, cfg.identity)

    # The decompressor's (or a 64-bit loader's) identity map: 0–4 GiB in 2 MiB pages with flags
    # 0x183 (P RW PS G, no A/D), upper levels 0x7 — plus, when the kernel or boot data lie above
    # 4 GiB, the 1 GiB regions holding them (a 64-bit loader must map what it hands over).
    pt = cfg.pgtables_at
    alloc = FrameAllocator(mem, pt, pt + 32 * 4096)
    mode = PagingMode.LONG5 if cfg.loader_paging == 5 else PagingMode.LONG4
    mapper = Mapper(mem, mode, alloc, table_flags=0x7)
    covered = set(range(4))
    for addr in (cfg.kernel_at, cfg.kernel_at + image_size - 1, cfg.boot_params_at, cfg.cmdline_at):
        covered.add(addr >> 30)
    for g in sorted(covered):
        mapper.map(g << 30, g << 30, 1 << 30, 0x102, page_size=1 << 21)  # + P|PS = 0x183
    stack = alloc.alloc()

    cpu.write_cr4(int(Cr4.PAE | (Cr4.LA57 if cfg.loader_paging == 5 else 0)))
    cpu.write_cr3(mapper.root)
    cpu.write_efer(int(Efer.LME))
    cpu.write_cr0(int(Cr0.PE | Cr0.ET | Cr0.PG))
    cpu.lidt(0, 0)  # no usable IDT yet: any exception now ends in a triple fault, as on hardware
    cpu.regs.rsp = stack + 4096 - 8
    # into startup_64 at its physical address (the decompressor's, when the image has one)
    cpu.far_jump(cfg.kernel_at if entry is None else entry, long_mode_code=True, cs=0x10)
    return PcPlatform(mem, cpu, trace, cfg, ramdisk_at)
