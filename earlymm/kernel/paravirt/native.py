"""The native backend of ``pv_ops``: what ``native_pv_ops`` holds (arch/x86/kernel/paravirt.c @ v3.9
and 6.1). Entry stores are plain stores through the MMU at the entry's kernel virtual address; entry
values need no conversion; the alloc/release notifications are ``paravirt_nop``."""

from __future__ import annotations

from array import array
from typing import Protocol

from earlymm.arch.addr import PhysAddr, VirtAddr
from earlymm.hw.cpu import Cpu
from earlymm.kernel import native
from earlymm.kernel.paravirt.ops import NopTableNotices, SetOp, entry_bytes


class KernelPort(Protocol):
    """What the native ops need of the kernel context: the CPU and stores through the MMU."""

    @property
    def cpu(self) -> Cpu: ...

    def wr(self, va: int, value: int, size: int = 8) -> None: ...


class NativeMmuOps(NopTableNotices):  # bare metal needs no notice of which pages are tables
    name = "native"

    def __init__(self, port: KernelPort, entry_size: int = 8) -> None:
        self.port = port
        self.entry_size = entry_size

    def read_cr2(self) -> int:
        return native.native_read_cr2(self.port.cpu)

    def read_cr3(self) -> int:
        return native.native_read_cr3(self.port.cpu)

    def write_cr3(self, cr3: PhysAddr) -> None:
        native.native_write_cr3(self.port.cpu, cr3)

    def flush_tlb_user(self) -> None:
        native.native_flush_tlb(self.port.cpu)

    def flush_tlb_kernel(self) -> None:
        native.native_flush_tlb_global(self.port.cpu)

    def flush_tlb_one_user(self, addr: VirtAddr) -> None:
        native.native_flush_tlb_one(self.port.cpu, addr)

    def _store(self, ptr: VirtAddr, val: int) -> None:
        self.port.wr(ptr, val, self.entry_size)

    def set_pte(self, ptr: VirtAddr, val: int) -> None:
        self._store(ptr, val)

    def set_pmd(self, ptr: VirtAddr, val: int) -> None:
        self._store(ptr, val)

    def set_pud(self, ptr: VirtAddr, val: int) -> None:
        self._store(ptr, val)

    def set_p4d(self, ptr: VirtAddr, val: int) -> None:
        self._store(ptr, val)

    def set_pgd(self, ptr: VirtAddr, val: int) -> None:
        self._store(ptr, val)

    def set_entries(self, op: SetOp, ptr: VirtAddr, vals: array[int]) -> None:
        # Consecutive plain stores: one write of the same bytes through the MMU.
        self.port.cpu.write(ptr, entry_bytes(vals, self.entry_size))

    def make_entry(self, val: int) -> int:
        return val

    def entry_val(self, raw: int) -> int:
        return raw

    def make_entries(self, vals: array[int]) -> array[int]:
        return vals










class NativeCpuOps:
    def __init__(self, port: KernelPort) -> None:
        self.port = port

    def read_cr4(self) -> int:
        return native.native_read_cr4(self.port.cpu)

    def write_cr4(self, cr4: int) -> None:
        native.native_write_cr4(self.port.cpu, cr4)

    def load_idt(self, base: VirtAddr, limit: int) -> None:
        self.port.cpu.lidt(base, limit)  # native_load_idt: lidt

    def write_idt_entry(self, idt: VirtAddr, vector: int, lo: int, hi: int) -> None:
        self.port.wr(idt + 16 * vector, lo)  # native_write_idt_entry: memcpy of the gate
        self.port.wr(idt + 16 * vector + 8, hi)
