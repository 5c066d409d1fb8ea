"""Architectural register state: plain data, no logic (the rules live in ``control.py``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CpuMode(enum.Enum):
    """Operating modes paging depends on (SDM Vol. 3A §2.2)."""

    REAL = "real"
    PROTECTED = "protected"
    COMPAT = "compatibility"
    LONG64 = "64-bit"


@dataclass
class ControlRegs:
    """The registers paging and exception delivery read."""

    cr0: int = 0x10  # ET: the reset value of a modern CPU
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    pkru: int = 0
    pkrs: int = 0
    cpl: int = 0
    cs: int = 0  # code segment selector (what an exception frame saves)
    cs_l: bool = False  # code segment with L=1: 64-bit mode when EFER.LMA
    ac: bool = False  # EFLAGS.AC
    pdptes: tuple[int, int, int, int] = (0, 0, 0, 0)  # PAE PDPTE registers, loaded at CR3 writes
    rip: int = 0
    rsp: int = 0
    rflags: int = 0x2
    idt_base: int = 0
    idt_limit: int = -1  # -1: no IDT loaded

    def __setattr__(self, name: str, value: object) -> None:
        # ``value | Cr0.ET`` is a ``Cr0``, and the CPU tests these registers on every access: IntFlag
        # arithmetic costs a Python call each time, so the registers hold the same values as plain ints.
        if isinstance(value, enum.IntFlag):
            value = int(value)
        object.__setattr__(self, name, value)
