"""The platform a kernel boots on, as the kernel model sees it (design §7.1 ``platform``).

A platform owns the simulated hardware (memory, CPU, trace) and knows how the kernel was entered: its
memory map as the firmware reports it, where the boot loader or domain builder left the kernel and its
boot data, and the CPU's identity. Today's implementation is the bare-metal PC (``platform/pc.py``); a
Xen PV domain is the next.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from earlymm.arch.cpuid import CpuIdentity
from earlymm.hw.cpu import Cpu
from earlymm.hw.events import ListTrace
from earlymm.hw.memory import PhysMem, Region


class EntryProtocol(enum.Enum):
    """How control reaches the kernel."""

    BOOT_PARAMS_64 = "x86-64 boot protocol"  # startup_64, %rsi = boot_params (Documentation/x86/boot)
    BOOT_PARAMS_32 = "i386 boot protocol"  # startup_32 at 1 MiB, paging off, %esi = boot_params
    XEN_PV_64 = "Xen PV"  # startup_xen in ring 3 on the builder's tables, %rsi = start_info (a virtual address)
    XEN_PV_32 = "Xen PV (i386)"  # startup_xen in ring 1 on the builder's 2-level/PAE tables, %esi = start_info


@dataclass(frozen=True, slots=True)
class BootEntry:
    """The state at the kernel's first instruction: the protocol, the physical load address of ``_text``,
    and the address of the boot data: physical ``boot_params`` for the x86-64 protocol, the virtual
    address of ``start_info`` (what ``%rsi`` holds) for Xen PV."""

    protocol: EntryProtocol
    kernel_at: int
    boot_data: int
    ramdisk_at: int
    ramdisk_size: int


class Platform(Protocol):
    name: str
    mem: PhysMem
    cpu: Cpu
    trace: ListTrace

    @property
    def identity(self) -> CpuIdentity: ...

    @property
    def entry(self) -> BootEntry: ...

    @property
    def dmi(self) -> tuple[str, ...]:
        """The firmware's identification strings (SMBIOS) that ``dmi_setup`` keeps."""
        ...

    def memory_map(self) -> tuple[Region, ...]:
        """The firmware's map (e820 on a PC): what the platform has, not what the kernel believes."""
        ...

    def ram(self) -> list[Region]: ...
