"""What the kernel learns from CPUID (arch/x86/include/asm/cpufeature.h, cpufeatures.h;
arch/x86/lib/cpu.c ``x86_family``; the early microcode code's ``x86_cpuid_vendor``).

The kernel model reads the CPU's identity and features the way Linux does — by executing CPUID on the
CPU model — never from the simulator's ``Features`` object directly.
"""

from __future__ import annotations

import enum

from earlymm.arch.cpuid import Vendor
from earlymm.hw.cpu import Cpu


class X86Feature(enum.Enum):
    """(leaf, register index EAX=0 … EDX=3, bit) of the ``X86_FEATURE_*`` bits the model consults."""

    PSE = (1, 3, 3)
    PAE = (1, 3, 6)
    PGE = (1, 3, 13)
    HYPERVISOR = (1, 2, 31)
    NX = (0x8000_0001, 3, 20)
    GBPAGES = (0x8000_0001, 3, 26)
    LA57 = (7, 2, 16)


def boot_cpu_has(cpu: Cpu, feature: X86Feature) -> bool:
    leaf, reg, bit = feature.value
    return bool(cpu.cpuid(leaf)[reg] >> bit & 1)


def x86_cpuid_vendor(cpu: Cpu) -> Vendor | None:
    """The vendor from CPUID leaf 0's EBX, EDX, ECX string; None for one Linux does not know here."""
    _eax, ebx, ecx, edx = cpu.cpuid(0)
    name = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx))
    return next((v for v in Vendor if v.signature == name), None)


def x86_family(sig: int) -> int:
    """``x86_family(sig)``: the base family, plus the extended family when the base is 0xF."""
    family = (sig >> 8) & 0xF
    if family == 0xF:
        family += (sig >> 20) & 0xFF
    return family
