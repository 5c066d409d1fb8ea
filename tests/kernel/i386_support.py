"""Shared helpers of the i386 boot tests: a machine, a boot, physical reads, a seam watcher."""

from __future__ import annotations

import struct
from typing import Any

from earlymm.arch.addr import Pfn, VirtAddr
from earlymm.arch.modes import Features
from earlymm.kernel.i386.boot import I386BootResult, boot
from earlymm.kernel.i386.consts import V2621
from earlymm.kernel.i386.context import I386Config, I386Context
from earlymm.kernel.i386.layout import DEFAULT_IMAGE_SIZE
from earlymm.kernel.i386.paravirt import native_pv_ops
from earlymm.kernel.i386.pvops import I386PvOps
from earlymm.kernel.phases import Phase
from earlymm.platform.pc import MachineConfig, pc_e820

PAGE_OFFSET = 0xC000_0000  # include/asm-i386/page.h, 3G/1G split


def machine(mem: int = 1 << 30, *, pse: bool = True, pge: bool = True, nx: bool = True) -> MachineConfig:
    return MachineConfig(e820=tuple(pc_e820(mem)), kernel_at=0x10_0000,
                         features=Features(nx=nx, pse=pse, pge=pge, la57=False, pks=False, gbpages=False))


def run(pae: bool, *, mem: int = 1 << 30, until: Phase | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
        pse: bool = True, pge: bool = True, nx: bool = True, pv: Any = None) -> I386BootResult:
    return boot(machine(mem, pse=pse, pge=pge, nx=nx), I386Config(V2621, pae=pae, image_size=image_size),
                until=until, trace=True, pv=pv)


def u32s(r: I386BootResult, pa: int, n: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{n}I", r.ctx.platform.mem.read(pa, 4 * n))


def u64s(r: I386BootResult, pa: int, n: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{n}Q", r.ctx.platform.mem.read(pa, 8 * n))


def phys(r: I386BootResult, name: str) -> int:
    return r.ctx.layout[name] - PAGE_OFFSET


class Recorder:
    """Wraps the native MMU ops and records the seam's calls (what a Xen backend would receive)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _store(self, op: str, ptr: VirtAddr, val: int) -> None:
        self.calls.append((op, ptr, val))
        getattr(self.inner, op)(ptr, val)

    def set_pud(self, ptr: VirtAddr, val: int) -> None:
        self._store("set_pud", ptr, val)

    def set_pmd(self, ptr: VirtAddr, val: int) -> None:
        self._store("set_pmd", ptr, val)

    def set_pgd(self, ptr: VirtAddr, val: int) -> None:
        self._store("set_pgd", ptr, val)

    def alloc_pmd(self, pfn: Pfn) -> None:
        self.calls.append(("alloc_pmd", pfn, 0))

    def alloc_pte(self, pfn: Pfn) -> None:
        self.calls.append(("alloc_pte", pfn, 0))


def recording(holder: list[Recorder]) -> Any:
    def make(ctx: I386Context) -> I386PvOps:
        ops = native_pv_ops(ctx)
        rec = Recorder(ops.mmu)
        holder.append(rec)
        return I386PvOps(rec, ops.cpu, init=ops.init)  # type: ignore[arg-type]
    return make
