"""The kernel's view of the machine: memory through the MMU at kernel virtual addresses, the address
conversions of Linux (``__va``, ``__pa``, ``__pa_symbol``), and the model's configuration.

Every page-table edit the model makes goes through ``rd``/``wr`` here, i.e. through ``Cpu.load``/``store``
and so through the MMU: each access can fault exactly as on hardware (design §7.4 rule 5).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from earlymm.hw.cpu import Cpu
from earlymm.hw.events import Event, ListTrace
from earlymm.kernel.consts import START_KERNEL_MAP, Profile
from earlymm.kernel.events import ConsoleLine
from earlymm.kernel.layout import KernelLayout
from earlymm.platform.pc import LoadedMachine


class Variant(enum.Enum):
    MERGED = "merged"  # v3.9 as merged (commit 8170e6be)
    RFC = "rfc"  # hpa's December 2012 illustration patch (seed 001)


class PoolAccess(enum.Enum):
    HIGH_MAP = "high-map"  # pool pages via __START_KERNEL_map - phys_base, as merged
    PAGE_OFFSET = "page-offset"  # via __va(): the recursion seed 001's comment warns about


@dataclass(frozen=True)
class KernelConfig:
    profile: Profile
    variant: Variant = Variant.MERGED
    pool_access: PoolAccess = PoolAccess.HIGH_MAP
    pool_pages: int = 64
    force_nx: bool = False  # set bit 63 in early_pmd_flags even without NX (the pre-fix kernels)


@dataclass
class BootStats:
    pool_allocs: int = 0
    pool_resets: int = 0
    pool_high_water: int = 0
    handler_calls: int = 0
    handler_mapped: int = 0
    handler_declined: int = 0
    low_pages_brk: int = 0
    low_pages_memblock: int = 0


@dataclass
class KernelContext:
    machine: LoadedMachine
    layout: KernelLayout
    config: KernelConfig
    stats: BootStats = field(default_factory=BootStats)
    console: list[str] = field(default_factory=list)
    mm: Any = None  # the MmState of init.c once setup_arch has built it
    observer: Any = None  # invariant checker called at the points spec §3.11 names (not kernel code)

    @property
    def cpu(self) -> Cpu:
        return self.machine.cpu

    @property
    def trace(self) -> ListTrace:
        return self.machine.trace

    @property
    def profile(self) -> Profile:
        return self.config.profile

    def emit(self, event: Event) -> None:
        self.machine.trace.emit(event)

    def sym(self, name: str) -> int:
        return self.layout[name]

    # -- memory at kernel virtual addresses, through the MMU ------------------------------------------
    def rd(self, va: int, size: int = 8) -> int:
        return self.cpu.load(va, size)

    def wr(self, va: int, value: int, size: int = 8) -> None:
        self.cpu.store(va, size, value)

    def memset(self, va: int, byte: int, size: int) -> None:
        self.cpu.write(va, bytes([byte]) * size)

    def memcpy(self, dst: int, src: int, size: int) -> None:
        self.cpu.write(dst, self.cpu.read(src, size))

    # -- address conversions (arch/x86/include/asm/page_64.h, spec §3.10) ------------------------------
    @property
    def phys_base(self) -> int:
        return self.rd(self.sym("phys_base"))

    def va(self, pa: int) -> int:
        """``__va(pa)``: the direct-map address."""
        return (pa + self.profile.page_offset) & ((1 << 64) - 1)

    def pa(self, va: int) -> int:
        """``__pa(va)`` (``__phys_addr``): kernel-image addresses via phys_base, others via PAGE_OFFSET."""
        if va >= START_KERNEL_MAP:
            return va - START_KERNEL_MAP + self.phys_base
        return (va - self.profile.page_offset) & ((1 << 64) - 1)

    def pa_symbol(self, name: str) -> int:
        return self.sym(name) - START_KERNEL_MAP + self.phys_base

    def print(self, text: str) -> None:
        """early_printk: the model's console (the timeline shows it)."""
        self.console.append(text)
        self.emit(ConsoleLine(text))
