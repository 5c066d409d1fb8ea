"""The i386 kernel's view of the machine: memory through the MMU at kernel virtual addresses, ``__va`` and
``__pa`` of the 3G/1G split, the 2-level or PAE page-table geometry, the paravirt ops, and the mm globals
of 2.6.21's setup.c and init.c (``max_low_pfn``, ``__PAGE_KERNEL`` …).

Every access goes through ``Cpu.load``/``store`` (design §7.4 rule 5). Stores into the page the CPU is
using as its 32-bit page directory are watched: the entries they change are reported as
``LiveEntryChanged`` — which is how the native PAE hook's writes into head.S's live directory show.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from earlymm.arch.modes import PagingMode
from earlymm.hw.events import Event, FaultRaised
from earlymm.hw.walk import OK
from earlymm.kernel.events import ConsoleLine
from earlymm.kernel.i386.consts import PAGE_OFFSET, U32, I386Profile, page_kernel, page_kernel_exec
from earlymm.kernel.i386.events import BootmemAlloc, EntryStore, LeafRun, LiveEntryChanged, TablePage
from earlymm.kernel.i386.layout import I386Layout
from earlymm.kernel.i386.pvops import I386PvOps
from earlymm.kernel.machine_access import MachineAccess
from earlymm.kernel.pgtable import PgtableGeometry, i386
from earlymm.kernel.phases import Phase
from earlymm.platform.base import Platform


@dataclass(frozen=True)
class I386Config:
    profile: I386Profile
    pae: bool = False
    pv: str = "native"  # the paravirt backend's name (what make_context binds)
    image_size: int = 3 << 20


@dataclass
class I386Stats:
    """Figures derived from the event stream as it passes."""

    faults: dict[int, int] = field(default_factory=dict)
    last_fault: FaultRaised | None = None
    pages_allocated: dict[str, int] = field(default_factory=dict)  # table level -> pages
    pages_kept: dict[str, int] = field(default_factory=dict)
    leaves_written: int = 0
    leaves_were_present: int = 0
    entry_stores: int = 0
    live_entries_changed: int = 0
    bootmem_pages: int = 0

    def on_event(self, e: Event) -> None:
        if isinstance(e, FaultRaised):
            self.faults[e.vector] = self.faults.get(e.vector, 0) + 1
            self.last_fault = e
        elif isinstance(e, TablePage):
            d = self.pages_allocated if e.action == "allocated" else self.pages_kept
            d[e.level] = d.get(e.level, 0) + 1
        elif isinstance(e, LeafRun):
            self.leaves_written += e.count
            self.leaves_were_present += e.present
        elif isinstance(e, EntryStore):
            self.entry_stores += 1
        elif isinstance(e, LiveEntryChanged):
            self.live_entries_changed += 1
        elif isinstance(e, BootmemAlloc):
            self.bootmem_pages += 1


@dataclass
class I386Mm:
    """The mm globals: setup.c's pfn limits, init.c's page protections and the PTE masks."""

    max_pfn: int = 0
    max_low_pfn: int = 0
    min_low_pfn: int = 0
    highstart_pfn: int = 0
    highend_pfn: int = 0
    nx_enabled: bool = False
    disable_nx: bool = False  # noexec=off
    supported_pte_mask: int = (1 << 64) - 1  # PAE: ~_PAGE_NX until set_nx() finds NX
    page_kernel: int = 0  # __PAGE_KERNEL (pagetable_init ORs in _PAGE_GLOBAL)
    page_kernel_exec: int = 0  # __PAGE_KERNEL_EXEC
    e820: list[tuple[int, int, int]] = field(default_factory=list)
    kmap_pte: int = 0
    pkmap_page_table: int = 0
    bootmem: Any = None  # the Bootmem allocator once init_bootmem ran


@dataclass
class I386Context(MachineAccess):
    platform: Platform
    layout: I386Layout
    config: I386Config
    stats: I386Stats = field(default_factory=I386Stats)
    console: list[str] = field(default_factory=list)
    phase: Phase | None = None
    calls: list[str] = field(default_factory=list)  # the kernel functions running, outermost first
    mm: I386Mm = field(default_factory=I386Mm)
    kernel_profile: I386Profile | None = None  # the profile as reserve_top_address left it (Xen)
    pgt: PgtableGeometry = field(init=False)
    pv: I386PvOps = field(init=False)  # bound by the composition root (kernel/i386/boot.py)

    def __post_init__(self) -> None:
        self.trace.listeners.append(self.stats.on_event)
        self.pgt = i386(pae=self.config.pae)
        pae = self.config.pae
        self.mm.supported_pte_mask = ((1 << 64) - 1) & ~(1 << 63) if pae else U32
        self.mm.page_kernel, self.mm.page_kernel_exec = page_kernel(pae), page_kernel_exec()

    @property
    def profile(self) -> I386Profile:
        return self.kernel_profile or self.config.profile

    @property
    def pae(self) -> bool:
        return self.config.pae

    @contextlib.contextmanager
    def running(self, fn: str) -> Iterator[None]:
        """Marks ``fn`` as the kernel function whose stores are being made (events name it)."""
        self.calls.append(fn)
        try:
            yield
        finally:
            self.calls.pop()

    @property
    def fn(self) -> str:
        return self.calls[-1] if self.calls else "?"

    def print(self, text: str) -> None:
        """printk: the model's console."""
        self.console.append(text)
        self.emit(ConsoleLine(text))

    # -- memory at kernel virtual addresses, through the MMU ------------------------------------------
    def rd(self, va: int, size: int = 4) -> int:
        return self.cpu.load(va, size)

    def wr(self, va: int, value: int, size: int = 4) -> None:
        with self.watching(va, size):
            self.cpu.store(va, size, value)

    def memset(self, va: int, byte: int, size: int) -> None:
        with self.watching(va, size):
            self.cpu.write(va, bytes([byte]) * size)

    @contextlib.contextmanager
    def watching(self, va: int, size: int) -> Iterator[None]:
        """Around a store of ``size`` bytes at ``va``: report the live directory entries it changes."""
        live = self._live_directory(va, size)
        yield
        if live is not None:
            self._report_live(*live)

    def _live_directory(self, va: int, size: int) -> tuple[int, int, bytes] | None:
        """(directory pa, first byte, the directory's bytes) when [va, va+size) lies in the page CR3 names
        while the CPU runs 32-bit paging; None otherwise (the usual case, checked without a walk)."""
        cpu = self.cpu
        if cpu.mmu.mode is not PagingMode.LEGACY32 or (va & 0xFFF) + size > 0x1000:
            return None
        res = cpu.mmu.probe(va)
        pd = cpu.regs.cr3 & 0xFFFF_F000
        if res.outcome != OK or res.pa & ~0xFFF != pd:
            return None
        return pd, res.pa & 0xFFF, self.platform.mem.read(pd, 4096)

    def _report_live(self, pd: int, _first: int, before: bytes) -> None:
        after = self.platform.mem.read(pd, 4096)
        if after == before:
            return
        for i in range(1024):
            old, new = (int.from_bytes(b[4 * i:4 * i + 4], "little") for b in (before, after))
            if old != new:
                self.emit(LiveEntryChanged(self.fn, i, old, new))

    def entry_val(self, raw: int) -> int:
        """``pXd_val``: an entry as the kernel sees it (identity natively)."""
        return self.pv.mmu.entry_val(raw)

    # -- address conversions (include/asm-i386/page.h) -------------------------------------------------
    def va(self, pa: int) -> int:
        """``__va(pa)`` = pa + PAGE_OFFSET."""
        return (pa + PAGE_OFFSET) & U32

    def pa(self, va: int) -> int:
        """``__pa(va)`` = va - PAGE_OFFSET (one linear map: kernel image and lowmem alike)."""
        return (va - PAGE_OFFSET) & U32

    def pa_symbol(self, name: str) -> int:
        return self.pa(self.sym(name))
