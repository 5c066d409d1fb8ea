"""Hardware bit fields as ``IntFlag``s (SDM Vol. 3A §2.5, §4.5, §4.7; spec §1.1, §1.3, §1.7)."""

from __future__ import annotations

import enum


class PteFlag(enum.IntFlag):
    """Bits of a paging-structure entry (4-level names; meaning depends on level, see spec §1.3)."""

    P = 1 << 0  #: present
    RW = 1 << 1  #: writable
    US = 1 << 2  #: user-accessible
    PWT = 1 << 3  #: page-level write-through
    PCD = 1 << 4  #: page-level cache disable
    A = 1 << 5  #: accessed
    D = 1 << 6  #: dirty (leaf only)
    PS = 1 << 7  #: page size in PDE/PDPTE; PAT in a 4 KiB PTE
    G = 1 << 8  #: global (leaf only, with CR4.PGE)
    PAT_LARGE = 1 << 12  #: PAT bit of a 2 MiB / 1 GiB / 4 MiB leaf
    XD = 1 << 63  #: execute-disable (with EFER.NXE)


PTE_PAT = PteFlag.PS  # bit 7 of a 4 KiB PTE
PK_SHIFT = 59
PK_MASK = 0xF << PK_SHIFT


class Cr0(enum.IntFlag):
    PE = 1 << 0  #: protection enable
    MP = 1 << 1
    EM = 1 << 2
    TS = 1 << 3
    ET = 1 << 4
    NE = 1 << 5
    WP = 1 << 16  #: supervisor writes honour RW
    AM = 1 << 18
    NW = 1 << 29
    CD = 1 << 30
    PG = 1 << 31  #: paging


CR0_RESERVED = ((1 << 64) - 1) & ~sum(int(f) for f in Cr0)


class Cr4(enum.IntFlag):
    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2
    DE = 1 << 3
    PSE = 1 << 4  #: 4 MiB pages in 32-bit paging
    PAE = 1 << 5  #: 64-bit entries
    MCE = 1 << 6
    PGE = 1 << 7  #: global pages
    PCE = 1 << 8
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12  #: 5-level paging
    VMXE = 1 << 13
    SMXE = 1 << 14
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17  #: process-context identifiers
    OSXSAVE = 1 << 18
    SMEP = 1 << 20  #: supervisor-mode execution prevention
    SMAP = 1 << 21  #: supervisor-mode access prevention
    PKE = 1 << 22  #: protection keys for user pages
    CET = 1 << 23
    PKS = 1 << 24  #: protection keys for supervisor pages


CR4_RESERVED = ((1 << 64) - 1) & ~sum(int(f) for f in Cr4)


class Efer(enum.IntFlag):
    SCE = 1 << 0
    LME = 1 << 8  #: long mode enable
    LMA = 1 << 10  #: long mode active (read-only)
    NXE = 1 << 11  #: execute-disable bit enable


# Defined EFER bits: SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR.
EFER_RESERVED = ((1 << 64) - 1) & ~(0x1 | 0x100 | 0x400 | 0x800 | (1 << 12) | (1 << 14) | (1 << 15))
MSR_EFER = 0xC000_0080


class PfError(enum.IntFlag):
    """#PF error code bits (SDM Vol. 3A §4.7)."""

    P = 1 << 0  #: protection violation (0: not-present entry)
    W = 1 << 1  #: the access was a write
    U = 1 << 2  #: user-mode access
    RSVD = 1 << 3  #: reserved bit set in a paging-structure entry
    ID = 1 << 4  #: instruction fetch
    PK = 1 << 5  #: protection-key violation
    SS = 1 << 6  #: shadow-stack access
    HLAT = 1 << 7
    SGX = 1 << 15
    RMP = 1 << 31


PF_ERROR_WORDS = {
    PfError.P: ("protection violation", "page not present"),
    PfError.W: ("write", "read"),
    PfError.U: ("user mode", "supervisor mode"),
    PfError.RSVD: ("reserved bit set", "no reserved bit"),
    PfError.ID: ("instruction fetch", "data access"),
    PfError.PK: ("protection-key violation", "no key violation"),
}


def describe_pf_error(code: int) -> list[str]:
    """Each architectural error-code bit spelled out, in bit order."""
    out = []
    for bit, (on, off) in PF_ERROR_WORDS.items():
        out.append(f"{bit.name}={1 if code & bit else 0} ({on if code & bit else off})")
    return out
