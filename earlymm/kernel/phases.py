"""Typed boot phases and outcomes (the boot paths yield ``Phase``; a run ends with a ``BootOutcome``)."""

from __future__ import annotations

import enum


class Phase(str, enum.Enum):
    """Where a boot path can stop (``--until``); each native x86-64 phase is a kernel function."""

    DECOMPRESSOR = "decompressor"
    STARTUP_64 = "startup_64"
    X86_64_START_KERNEL = "x86_64_start_kernel"
    SETUP_ARCH = "setup_arch"
    INIT_MEM_MAPPING = "init_mem_mapping"
    END = "end"

    @classmethod
    def parse(cls, text: str) -> Phase:
        for p in cls:
            if p.value == text:
                return p
        raise ValueError(f"unknown phase {text!r} (one of: {', '.join(p.value for p in cls)})")


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

    @property
    def crashed(self) -> bool:
        return self not in (BootOutcome.BOOTED, BootOutcome.STOPPED)
