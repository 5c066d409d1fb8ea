"""CPU identity and the CPUID leaves the modelled kernels read (spec §1.1; SDM Vol. 2A "CPUID").

Identity is machine input like the feature set: the vendor string of leaf 0, the family/model/stepping
signature of leaf 1 EAX, and the hypervisor bit CPUID.1:ECX[31]. ``cpuid_leaf`` builds the registers
from an identity and a ``Features`` so that kernel code can decode them as Linux does (``x86_vendor``,
``x86_family``, ``boot_cpu_has``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from earlymm.arch.modes import Features


class Vendor(enum.Enum):
    INTEL = "intel"
    AMD = "amd"

    @property
    def signature(self) -> bytes:
        """The 12-byte vendor string of CPUID leaf 0 (EBX, EDX, ECX)."""
        return b"GenuineIntel" if self is Vendor.INTEL else b"AuthenticAMD"


@dataclass(frozen=True, slots=True)
class CpuIdentity:
    """Who the CPU says it is. The default is an Ivy Bridge (family 6, model 0x3a, stepping 9), the CPU
    whose microcode the built-in ramdisk carries."""

    vendor: Vendor = Vendor.INTEL
    family: int = 6
    model: int = 0x3A
    stepping: int = 9
    hypervisor: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.family <= 0xF + 0xFF:
            raise ValueError(f"CPU family {self.family:#x} does not fit CPUID.1:EAX (0..0x10e)")
        if not 0 <= self.model <= 0xFF:
            raise ValueError(f"CPU model {self.model:#x} does not fit CPUID.1:EAX (0..0xff)")
        if not 0 <= self.stepping <= 0xF:
            raise ValueError(f"CPU stepping {self.stepping} does not fit CPUID.1:EAX (0..15)")

    @property
    def signature(self) -> int:
        """CPUID.1:EAX: stepping 3:0, model 7:4, family 11:8, extended model 19:16, extended family 27:20
        (the extended fields are used for family 0xF, and the extended model also for family 6)."""
        fam, ext_fam = (self.family, 0) if self.family < 0xF else (0xF, self.family - 0xF)
        return self.stepping | (self.model & 0xF) << 4 | fam << 8 | (self.model >> 4) << 16 | ext_fam << 20


def cpuid_leaf(identity: CpuIdentity, features: Features, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) of CPUID ``leaf``; zeros for leaves the model does not describe."""
    if leaf == 0:
        v = identity.vendor.signature
        return 0xD, int.from_bytes(v[0:4], "little"), int.from_bytes(v[8:12], "little"), \
            int.from_bytes(v[4:8], "little")
    if leaf == 1:
        ecx = (1 << 17 if features.pcid else 0) | (1 << 31 if identity.hypervisor else 0)
        edx = (features.pse << 3) | (1 << 6) | (features.pge << 13) | (features.pse36 << 17)
        return identity.signature, 0, ecx, edx
    if leaf == 7 and subleaf == 0:
        ebx = (features.smep << 7) | (features.smap << 20)
        ecx = (features.pku << 3) | (features.la57 << 16) | (features.pks << 31)
        return 0, ebx, ecx, 0
    if leaf == 0x8000_0000:
        return 0x8000_0008, 0, 0, 0
    if leaf == 0x8000_0001:
        return 0, 0, 0, (features.nx << 20) | (features.gbpages << 26) | (1 << 29)
    if leaf == 0x8000_0008:
        return features.maxphyaddr | (57 if features.la57 else 48) << 8, 0, 0, 0
    return 0, 0, 0, 0
