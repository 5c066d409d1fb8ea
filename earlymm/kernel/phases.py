"""Typed boot phases and outcomes (the boot paths yield ``Phase``; a run ends with a ``BootOutcome``)."""

from __future__ import annotations

import enum


class Phase(str, enum.Enum):
    """Where a boot path can stop (``--until``); each phase is a kernel function (or, for the i386 hooks,
    the point right after one). Which phases a path has is the path's: ``X86_64_PHASES``, ``I386_PHASES``."""

    DECOMPRESSOR = "decompressor"
    XEN_START_KERNEL = "xen_start_kernel"  # Xen PV: its first instruction, on the domain builder's tables
    STARTUP_64 = "startup_64"
    X86_64_START_KERNEL = "x86_64_start_kernel"
    SETUP_ARCH = "setup_arch"
    INIT_MEM_MAPPING = "init_mem_mapping"
    # i386 (2.6.21): head.S, then paging_init with seed 002's hooks
    STARTUP_32 = "startup_32"
    PAGETABLE_SETUP_START = "pagetable_setup_start"
    PAGETABLE_INIT = "pagetable_init"  # i386 pagetable_init; Xen PV: x86_init.paging.pagetable_init
    PAGING_INIT = "paging_init"
    END = "end"

    @classmethod
    def parse(cls, text: str) -> Phase:
        for p in cls:
            if p.value == text:
                return p
        raise ValueError(f"unknown phase {text!r} (one of: {', '.join(p.value for p in cls)})")


X86_64_PHASES = (Phase.DECOMPRESSOR, Phase.STARTUP_64, Phase.X86_64_START_KERNEL, Phase.SETUP_ARCH,
                 Phase.INIT_MEM_MAPPING, Phase.END)
XEN_PV_PHASES = (Phase.XEN_START_KERNEL, Phase.SETUP_ARCH, Phase.INIT_MEM_MAPPING, Phase.PAGETABLE_INIT, Phase.END)
I386_PHASES = (Phase.STARTUP_32, Phase.SETUP_ARCH, Phase.PAGETABLE_SETUP_START, Phase.PAGETABLE_INIT,
               Phase.PAGING_INIT, Phase.END)
I386_XEN_PHASES = (Phase.XEN_START_KERNEL, *I386_PHASES[1:])  # startup_xen enters xen_start_kernel, no head.S


class BootOutcome(str, enum.Enum):
    """How a run ended. Anything but ``BOOTED`` and ``STOPPED`` is a crash (exit 1)."""

    BOOTED = "booted"
    STOPPED = "stopped"
    PANIC = "panic"
    HALT = "halt"
    HANG = "hang"
    OOPS = "oops"
    TRIPLE_FAULT = "triple_fault"
    LIVELOCK = "livelock"
    FAULT = "fault"
    LOST_CONTROL = "lost_control"
    DOMAIN_CRASH = "domain_crash"  # the hypervisor crashed the guest

    @property
    def crashed(self) -> bool:
        return self not in (BootOutcome.BOOTED, BootOutcome.STOPPED)
