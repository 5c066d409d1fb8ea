"""The kernel's view of the machine: memory through the MMU at kernel virtual addresses, Linux's address
conversions (``__va``, ``__pa``, ``__pa_symbol``), the page-table geometry, the paravirt ops, and the
model's configuration.

Every page-table access the model makes goes through ``rd``/``wr`` here (directly, or inside a
``pv_ops`` backend), i.e. through ``Cpu.load``/``store`` and so through the MMU: each access can fault
exactly as on hardware (design §7.4 rule 5).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from earlymm.hw.events import Event, FaultDelivered, FaultRaised
from earlymm.kernel.consts import START_KERNEL_MAP, Profile
from earlymm.kernel.events import ConsoleLine, HandlerOutcome, LowPageAlloc, PoolAlloc, PoolReset
from earlymm.kernel.layout import KernelLayout
from earlymm.kernel.machine_access import MachineAccess
from earlymm.kernel.paravirt.native import NativeCpuOps, NativeMmuOps
from earlymm.kernel.paravirt.ops import PvOps
from earlymm.kernel.pgtable import PgtableGeometry, x86_64
from earlymm.kernel.phases import Phase
from earlymm.platform.base import Platform


class Variant(enum.Enum):
    MERGED = "merged"  # v3.9 as merged (commit 8170e6be)
    RFC = "rfc"  # hpa's December 2012 illustration patch (seed 001)


class PoolAccess(enum.Enum):
    HIGH_MAP = "high-map"  # pool pages via __START_KERNEL_map - phys_base, as merged
    PAGE_OFFSET = "page-offset"  # via __va(): the recursion seed 001's comment warns about


@dataclass(frozen=True)
class KernelConfig:
    """Which kernel runs: its profile, the early #PF handler variant and pool, and the build's symbols."""

    profile: Profile
    variant: Variant = Variant.MERGED
    pool_access: PoolAccess = PoolAccess.HIGH_MAP
    pool_pages: int = 64
    force_nx: bool = False  # set bit 63 in early_pmd_flags even without NX (the pre-fix kernels)
    symbols: dict[str, int] | None = None  # a real build's symbol addresses (else the model's own layout)
    decompressor: str | None = None  # run the decompressor's paging switch first: "v4.14", "rfc" or "merged"


@dataclass
class BootStats:
    """The run's figures, derived from the event stream as it passes (nothing is booked twice)."""

    pool_allocs: int = 0
    pool_resets: int = 0
    pool_high_water: int = 0
    handler_calls: int = 0
    handler_mapped: int = 0
    handler_declined: int = 0
    low_pages_brk: int = 0
    low_pages_memblock: int = 0
    faults: dict[int, int] = field(default_factory=dict)
    last_fault: FaultRaised | None = None

    def on_event(self, e: Event) -> None:
        if isinstance(e, FaultRaised):
            self.faults[e.vector] = self.faults.get(e.vector, 0) + 1
            self.last_fault = e
        elif isinstance(e, PoolAlloc):
            self.pool_allocs += 1
            self.pool_high_water = max(self.pool_high_water, e.index + 1)
        elif isinstance(e, PoolReset):
            self.pool_resets += 1
        elif isinstance(e, FaultDelivered) and e.handler.startswith("early_idt_handler"):
            self.handler_calls += 1
        elif isinstance(e, HandlerOutcome):
            if e.outcome == "halt":  # stopped by early_recursion_flag before it ran: not a call
                self.handler_calls -= 1
            elif e.outcome == "mapped":
                self.handler_mapped += 1
            elif e.vector == 14:  # a #PF that early_make_pgtable declined, then fixed up or fatal
                self.handler_declined += 1
        elif isinstance(e, LowPageAlloc):
            if e.source == "brk":
                self.low_pages_brk += 1
            else:
                self.low_pages_memblock += 1


@dataclass
class KernelContext(MachineAccess):
    """The running kernel: the platform it runs on, its layout and config, and its state so far."""

    platform: Platform
    layout: KernelLayout
    config: KernelConfig
    stats: BootStats = field(default_factory=BootStats)
    console: list[str] = field(default_factory=list)
    phase: Phase | None = None
    mm: Any = None  # the MmState of mm_init once setup_arch has built it
    observer: Any = None  # invariant checker called at the points spec §3.11 names (not kernel code)
    ioremap: Any = None  # early_ioremap's slots once early_ioremap_init ran
    decompressor_layout: Any = None  # where the decompressor sits, when the boot runs it
    xen: Any = None  # the Xen PV guest's state (start_info, the p2m list …) on that path
    brk_end: int = 0  # _brk_end once something used extend_brk before setup_arch (Xen PV); 0: __brk_base
    early_reservations: list[tuple[int, int]] = field(default_factory=list)  # memblock_reserve before setup_arch
    # x86_init.resources.memory_setup: fills the e820 table and names who ("BIOS-e820", "Xen"); None: the
    # default, from boot_params
    memory_setup: Any = None
    pagetable_init: Any = None  # x86_init.paging.pagetable_init where the path models it (Xen PV)
    pgt: PgtableGeometry = field(init=False)
    pv: PvOps = field(init=False)
    page_offset: int = field(init=False)  # page_offset_base: __PAGE_OFFSET of the paging mode the kernel runs in
    maxmem: int = field(init=False)  # MAXMEM = 1 << MAX_PHYSMEM_BITS (46, or 52 in 5-level mode)

    def __post_init__(self) -> None:
        self.trace.listeners.append(self.stats.on_event)
        self.page_offset, self.maxmem = self.profile.page_offset, self.profile.maxmem
        # Until __startup_64 learns otherwise (CR4.LA57), the kernel's tables are 4-level.
        self.pgt = x86_64(l5=False, physical_mask_shift=self.profile.physical_mask_shift)
        self.pv = PvOps(NativeMmuOps(self), NativeCpuOps(self))

    @property
    def profile(self) -> Profile:
        return self.config.profile

    # -- memory at kernel virtual addresses, through the MMU ------------------------------------------
    def rd(self, va: int, size: int = 8) -> int:
        return self.cpu.load(va, size)

    def wr(self, va: int, value: int, size: int = 8) -> None:
        self.cpu.store(va, size, value)

    def memset(self, va: int, byte: int, size: int) -> None:
        self.cpu.write(va, bytes([byte]) * size)

    def memcpy(self, dst: int, src: int, size: int) -> None:
        self.cpu.write(dst, self.cpu.read(src, size))

    def entry_val(self, raw: int) -> int:
        """``pXd_val``: an entry as the kernel sees it (pv: mfn→pfn under Xen)."""
        return self.pv.mmu.entry_val(raw)

    # -- address conversions (arch/x86/include/asm/page_64.h, spec §3.10) ------------------------------
    @property
    def phys_base(self) -> int:
        return self.rd(self.sym("phys_base"))

    def va(self, pa: int) -> int:
        """``__va(pa)``: the direct-map address."""
        return (pa + self.page_offset) & ((1 << 64) - 1)

    def pa(self, va: int) -> int:
        """``__pa(va)`` (``__phys_addr``): kernel-image addresses via phys_base, others via PAGE_OFFSET."""
        if va >= START_KERNEL_MAP:
            return va - START_KERNEL_MAP + self.phys_base
        return (va - self.page_offset) & ((1 << 64) - 1)

    def pa_symbol(self, name: str) -> int:
        return self.sym(name) - START_KERNEL_MAP + self.phys_base

    def print(self, text: str) -> None:
        """early_printk: the model's console (the timeline shows it)."""
        self.console.append(text)
        self.emit(ConsoleLine(text))
