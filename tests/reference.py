"""A deliberately simple, straight-line reference model of one x86 linear-address translation.

This is the oracle of the kvm-unit-tests ``x86/access.c`` idea: a second, independent statement of the
Intel SDM Vol. 3A ch. 4 rules (and of ``/work/shared/spec/early-boot-paging.md`` §1), written for
readability rather than speed, against which ``earlymm.hw.walk`` is compared case by case.

It imports nothing from ``earlymm``. Every paging mode has its own function with one explicit block per
level; the bit constants are spelled out here again. Memory is reached through a ``read(addr, size)``
callback, so the model never depends on how physical memory is stored.

Policy choices that the SDM leaves to the implementation (stated once, used everywhere):

* Accessed bits on a faulting walk: every entry *above* the one that stopped the walk (not present or
  a reserved bit) has been used and gets A=1; for a rights or protection-key fault every non-leaf entry
  gets A=1 and the leaf is left untouched. This is what QEMU does (except for the 1 GiB-leaf quirk named
  in the Unicorn tests) and what earlymm documents.
* The PK error-code bit follows the SDM's definition of the flag (§4.7): it is set when the protection
  key forbids the access, whether or not the ordinary rights forbid it too.
* PAE PDPTEs come from the PDPTE registers (``RefCpu.pdptes``) and are never written by the walk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# -- access kinds -----------------------------------------------------------------------------------
READ, WRITE, FETCH = 0, 1, 2
KIND_WORDS = ("read", "write", "exec")

# -- paging-structure entry bits (SDM Vol. 3A §4.3–§4.5) --------------------------------------------
BIT_P = 1 << 0
BIT_RW = 1 << 1
BIT_US = 1 << 2
BIT_PWT = 1 << 3
BIT_PCD = 1 << 4
BIT_A = 1 << 5
BIT_D = 1 << 6
BIT_PS = 1 << 7
BIT_G = 1 << 8
BIT_PAT_LARGE = 1 << 12
BIT_XD = 1 << 63

# -- control registers ------------------------------------------------------------------------------
CR0_PE = 1 << 0
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_LA57 = 1 << 12
CR4_PCIDE = 1 << 17
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
CR4_PKE = 1 << 22
CR4_PKS = 1 << 24
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

# -- #PF error code (SDM Vol. 3A §4.7) --------------------------------------------------------------
ERR_P = 1 << 0
ERR_W = 1 << 1
ERR_U = 1 << 2
ERR_RSVD = 1 << 3
ERR_ID = 1 << 4
ERR_PK = 1 << 5

OK, PF, GP = "ok", "pf", "gp"

Reader = Callable[[int, int], int]


def bits(hi: int, lo: int) -> int:
    """The mask of bits hi..lo inclusive; 0 when hi < lo."""
    if hi < lo:
        return 0
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


def pae_pdpte_reserved(maxphyaddr: int) -> int:
    """Reserved bits of a present PAE PDPTE: 2:1, 8:5 and 63:MAXPHYADDR (SDM Table 4-8)."""
    return bits(2, 1) | bits(8, 5) | bits(63, maxphyaddr)


@dataclass(frozen=True)
class RefCpu:
    """The processor state a translation depends on."""

    cr0: int
    cr3: int
    cr4: int
    efer: int
    maxphyaddr: int = 52
    gbpages: bool = True  # CPUID.80000001H:EDX[26]
    pse36: bool = True  # CPUID.1:EDX[17]
    pkru: int = 0
    pkrs: int = 0
    pdptes: tuple[int, int, int, int] | None = None  # PAE PDPTE registers; None: read them from CR3 now


@dataclass(frozen=True)
class RefAccess:
    va: int
    kind: int = READ
    user: bool = False  # an explicit access at CPL 3
    implicit: bool = False  # a supervisor access the CPU makes on its own (GDT, IDT, TSS …)
    ac: bool = False  # EFLAGS.AC


@dataclass
class RefResult:
    outcome: str  # OK, PF or GP
    pa: int = 0
    page_size: int = 0
    error_code: int = 0
    # Entries the CPU writes: entry address -> (entry size in bytes, entry value after the write).
    ad: dict[int, tuple[int, int]] = field(default_factory=dict)
    why: str = ""


def mode_of(cpu: RefCpu) -> str:
    """"none", "32", "pae", "4" or "5" (SDM Vol. 3A §4.1.1, Table 4-1)."""
    if not cpu.cr0 & CR0_PG:
        return "none"
    if not cpu.cr4 & CR4_PAE:
        return "32"
    if not cpu.efer & EFER_LMA:
        return "pae"
    if cpu.cr4 & CR4_LA57:
        return "5"
    return "4"


# -- the translation --------------------------------------------------------------------------------


@dataclass
class _Used:
    """One paging-structure entry the walk read from memory."""

    addr: int
    size: int
    value: int


def translate(read: Reader, cpu: RefCpu, acc: RefAccess) -> RefResult:
    mode = mode_of(cpu)
    if mode == "none":
        return RefResult(OK, pa=acc.va & 0xFFFF_FFFF, page_size=4096)
    if mode == "32":
        return _walk_32bit(read, cpu, acc)
    if mode == "pae":
        return _walk_pae(read, cpu, acc)
    if mode == "4":
        if not _canonical(acc.va, 48):
            return RefResult(GP, why="non-canonical address (48-bit)")
        return _walk_ia32e(read, cpu, acc, five_level=False)
    if not _canonical(acc.va, 57):
        return RefResult(GP, why="non-canonical address (57-bit)")
    return _walk_ia32e(read, cpu, acc, five_level=True)


def _canonical(va: int, width: int) -> bool:
    top = va >> (width - 1)
    return top == 0 or top == (1 << (64 - width + 1)) - 1


def _walk_32bit(read: Reader, cpu: RefCpu, acc: RefAccess) -> RefResult:
    """32-bit paging: PD (bits 31:22) and PT (bits 21:12), 4-byte entries, no XD, no keys."""
    va = acc.va & 0xFFFF_FFFF
    used: list[_Used] = []

    # Page directory.
    pde_addr = (cpu.cr3 & 0xFFFF_F000) + ((va >> 22) & 0x3FF) * 4
    pde = read(pde_addr, 4)
    if not pde & BIT_P:
        return _not_present(cpu, acc, used, "PDE not present")
    if cpu.cr4 & CR4_PSE and pde & BIT_PS:
        # A 4 MiB page. Bits 20:13 carry physical bits 39:32 (PSE-36) up to MAXPHYADDR (at most 40);
        # bit 21 and the PSE-36 bits beyond MAXPHYADDR are reserved.
        m = min(cpu.maxphyaddr, 40) if cpu.pse36 else 32
        reserved = (1 << 21) | bits(20, 13 + (m - 32))
        if pde & reserved:
            return _reserved(cpu, acc, used, f"4 MiB PDE reserved bits {pde & reserved:#x}")
        used.append(_Used(pde_addr, 4, pde))
        base = (pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32)
        return _finish(cpu, acc, used, base + (va & 0x3F_FFFF), 1 << 22, pkey=None)
    used.append(_Used(pde_addr, 4, pde))

    # Page table.
    pte_addr = (pde & 0xFFFF_F000) + ((va >> 12) & 0x3FF) * 4
    pte = read(pte_addr, 4)
    if not pte & BIT_P:
        return _not_present(cpu, acc, used, "PTE not present")
    used.append(_Used(pte_addr, 4, pte))
    return _finish(cpu, acc, used, (pte & 0xFFFF_F000) + (va & 0xFFF), 1 << 12, pkey=None)


def _walk_pae(read: Reader, cpu: RefCpu, acc: RefAccess) -> RefResult:
    """PAE paging: 4 PDPTE registers (bits 31:30), PD (29:21), PT (20:12), 8-byte entries."""
    va = acc.va & 0xFFFF_FFFF
    m = cpu.maxphyaddr
    # PDE/PTE reserved bits: 62:MAXPHYADDR, and 63 unless EFER.NXE (SDM Tables 4-10, 4-11).
    high = bits(62, m)
    if not cpu.efer & EFER_NXE:
        high |= BIT_XD
    used: list[_Used] = []

    # PDPTE register.
    i = (va >> 30) & 3
    pdpte = cpu.pdptes[i] if cpu.pdptes is not None else read((cpu.cr3 & 0xFFFF_FFE0) + 8 * i, 8)
    if not pdpte & BIT_P:
        return _not_present(cpu, acc, used, f"PDPTE{i} not present")
    if pdpte & pae_pdpte_reserved(m):
        raise ValueError(f"PDPTE{i} {pdpte:#x} has reserved bits: the CR3 load would have raised #GP")

    # Page directory.
    pde_addr = (pdpte & bits(m - 1, 12)) + ((va >> 21) & 0x1FF) * 8
    pde = read(pde_addr, 8)
    if not pde & BIT_P:
        return _not_present(cpu, acc, used, "PDE not present")
    if pde & BIT_PS:
        reserved = high | bits(20, 13)
        if pde & reserved:
            return _reserved(cpu, acc, used, f"2 MiB PDE reserved bits {pde & reserved:#x}")
        used.append(_Used(pde_addr, 8, pde))
        return _finish(cpu, acc, used, (pde & bits(m - 1, 21)) + (va & 0x1F_FFFF), 1 << 21, pkey=None)
    if pde & high:
        return _reserved(cpu, acc, used, f"PDE reserved bits {pde & high:#x}")
    used.append(_Used(pde_addr, 8, pde))

    # Page table.
    pte_addr = (pde & bits(m - 1, 12)) + ((va >> 12) & 0x1FF) * 8
    pte = read(pte_addr, 8)
    if not pte & BIT_P:
        return _not_present(cpu, acc, used, "PTE not present")
    if pte & high:
        return _reserved(cpu, acc, used, f"PTE reserved bits {pte & high:#x}")
    used.append(_Used(pte_addr, 8, pte))
    return _finish(cpu, acc, used, (pte & bits(m - 1, 12)) + (va & 0xFFF), 1 << 12, pkey=None)


def _walk_ia32e(read: Reader, cpu: RefCpu, acc: RefAccess, *, five_level: bool) -> RefResult:
    """4-level and 5-level paging: 9 index bits per level, 8-byte entries (SDM §4.5)."""
    va = acc.va
    m = cpu.maxphyaddr
    # Reserved in every entry: 51:MAXPHYADDR, and 63 unless EFER.NXE (SDM Tables 4-14 … 4-20).
    high = bits(51, m)
    if not cpu.efer & EFER_NXE:
        high |= BIT_XD
    used: list[_Used] = []
    table = cpu.cr3 & bits(m - 1, 12)

    if five_level:
        # PML5 (bits 56:48): PS is reserved.
        pml5e_addr = table + ((va >> 48) & 0x1FF) * 8
        pml5e = read(pml5e_addr, 8)
        if not pml5e & BIT_P:
            return _not_present(cpu, acc, used, "PML5E not present")
        if pml5e & (high | BIT_PS):
            return _reserved(cpu, acc, used, f"PML5E reserved bits {pml5e & (high | BIT_PS):#x}")
        used.append(_Used(pml5e_addr, 8, pml5e))
        table = pml5e & bits(m - 1, 12)

    # PML4 (bits 47:39): PS is reserved.
    pml4e_addr = table + ((va >> 39) & 0x1FF) * 8
    pml4e = read(pml4e_addr, 8)
    if not pml4e & BIT_P:
        return _not_present(cpu, acc, used, "PML4E not present")
    if pml4e & (high | BIT_PS):
        return _reserved(cpu, acc, used, f"PML4E reserved bits {pml4e & (high | BIT_PS):#x}")
    used.append(_Used(pml4e_addr, 8, pml4e))

    # PDPT (bits 38:30): PS=1 maps 1 GiB if the CPU has 1 GiB pages, else PS is reserved.
    pdpte_addr = (pml4e & bits(m - 1, 12)) + ((va >> 30) & 0x1FF) * 8
    pdpte = read(pdpte_addr, 8)
    if not pdpte & BIT_P:
        return _not_present(cpu, acc, used, "PDPTE not present")
    if pdpte & BIT_PS:
        if not cpu.gbpages:
            return _reserved(cpu, acc, used, "PDPTE.PS=1 without 1 GiB-page support")
        reserved = high | bits(29, 13)
        if pdpte & reserved:
            return _reserved(cpu, acc, used, f"1 GiB PDPTE reserved bits {pdpte & reserved:#x}")
        used.append(_Used(pdpte_addr, 8, pdpte))
        pa = (pdpte & bits(m - 1, 30)) + (va & 0x3FFF_FFFF)
        return _finish(cpu, acc, used, pa, 1 << 30, pkey=(pdpte >> 59) & 0xF)
    if pdpte & high:
        return _reserved(cpu, acc, used, f"PDPTE reserved bits {pdpte & high:#x}")
    used.append(_Used(pdpte_addr, 8, pdpte))

    # PD (bits 29:21): PS=1 maps 2 MiB.
    pde_addr = (pdpte & bits(m - 1, 12)) + ((va >> 21) & 0x1FF) * 8
    pde = read(pde_addr, 8)
    if not pde & BIT_P:
        return _not_present(cpu, acc, used, "PDE not present")
    if pde & BIT_PS:
        reserved = high | bits(20, 13)
        if pde & reserved:
            return _reserved(cpu, acc, used, f"2 MiB PDE reserved bits {pde & reserved:#x}")
        used.append(_Used(pde_addr, 8, pde))
        pa = (pde & bits(m - 1, 21)) + (va & 0x1F_FFFF)
        return _finish(cpu, acc, used, pa, 1 << 21, pkey=(pde >> 59) & 0xF)
    if pde & high:
        return _reserved(cpu, acc, used, f"PDE reserved bits {pde & high:#x}")
    used.append(_Used(pde_addr, 8, pde))

    # PT (bits 20:12).
    pte_addr = (pde & bits(m - 1, 12)) + ((va >> 12) & 0x1FF) * 8
    pte = read(pte_addr, 8)
    if not pte & BIT_P:
        return _not_present(cpu, acc, used, "PTE not present")
    if pte & high:
        return _reserved(cpu, acc, used, f"PTE reserved bits {pte & high:#x}")
    used.append(_Used(pte_addr, 8, pte))
    return _finish(cpu, acc, used, (pte & bits(m - 1, 12)) + (va & 0xFFF), 1 << 12, pkey=(pte >> 59) & 0xF)


# -- faults, rights, A/D ----------------------------------------------------------------------------


def _base_error(cpu: RefCpu, acc: RefAccess) -> int:
    code = 0
    if acc.kind == WRITE:
        code |= ERR_W
    if acc.user:
        code |= ERR_U
    # I/D is reported for fetches only if SMEP is on, or NXE is on with PAE-format entries (§4.7).
    if acc.kind == FETCH and (cpu.cr4 & CR4_SMEP or (cpu.cr4 & CR4_PAE and cpu.efer & EFER_NXE)):
        code |= ERR_ID
    return code


def _accessed(used: list[_Used]) -> dict[int, tuple[int, int]]:
    """A=1 in each of ``used`` that does not have it yet."""
    out: dict[int, tuple[int, int]] = {}
    for e in used:
        if not e.value & BIT_A:
            out[e.addr] = (e.size, e.value | BIT_A)
    return out


def _not_present(cpu: RefCpu, acc: RefAccess, above: list[_Used], why: str) -> RefResult:
    return RefResult(PF, error_code=_base_error(cpu, acc), ad=_accessed(above), why=why)


def _reserved(cpu: RefCpu, acc: RefAccess, above: list[_Used], why: str) -> RefResult:
    return RefResult(PF, error_code=_base_error(cpu, acc) | ERR_P | ERR_RSVD, ad=_accessed(above), why=why)


def _finish(cpu: RefCpu, acc: RefAccess, used: list[_Used], pa: int, page_size: int,
            pkey: int | None) -> RefResult:
    """Combine the rights of every entry used (SDM §4.6), check keys (§4.6.2), then A/D (§4.8)."""
    user_page = True
    writable = True
    xd = False
    for e in used:
        if not e.value & BIT_US:
            user_page = False
        if not e.value & BIT_RW:
            writable = False
        if e.size == 8 and cpu.efer & EFER_NXE and e.value & BIT_XD:
            xd = True

    wp = bool(cpu.cr0 & CR0_WP)
    smap = bool(cpu.cr4 & CR4_SMAP)
    smep = bool(cpu.cr4 & CR4_SMEP)
    supervisor = not acc.user
    rights_why = ""

    if acc.kind == FETCH:
        if xd:
            rights_why = "fetch from an execute-disabled page"
        elif acc.user and not user_page:
            rights_why = "user fetch from a supervisor page"
        elif supervisor and user_page and smep:
            rights_why = "supervisor fetch from a user page with SMEP"
    elif acc.kind == READ:
        if acc.user and not user_page:
            rights_why = "user read of a supervisor page"
        elif supervisor and user_page and smap and (acc.implicit or not acc.ac):
            rights_why = "supervisor read of a user page with SMAP"
    else:  # WRITE
        if acc.user:
            if not user_page:
                rights_why = "user write to a supervisor page"
            elif not writable:
                rights_why = "user write to a read-only page"
        else:
            if user_page and smap and (acc.implicit or not acc.ac):
                rights_why = "supervisor write to a user page with SMAP"
            elif wp and not writable:
                rights_why = "supervisor write to a read-only page with CR0.WP"

    # Protection keys: IA-32e paging only, data accesses only, PKRU for user pages with CR4.PKE,
    # PKRS for supervisor pages with CR4.PKS. AD forbids all data accesses; WD forbids writes from
    # user mode, and supervisor writes when CR0.WP=1.
    key_why = ""
    if pkey is not None and acc.kind != FETCH:
        register = None
        if user_page and cpu.cr4 & CR4_PKE:
            register = cpu.pkru
        if not user_page and cpu.cr4 & CR4_PKS:
            register = cpu.pkrs
        if register is not None:
            ad_bit = (register >> (2 * pkey)) & 1
            wd_bit = (register >> (2 * pkey + 1)) & 1
            if ad_bit:
                key_why = f"protection key {pkey} has AD=1"
            elif wd_bit and acc.kind == WRITE and (acc.user or wp):
                key_why = f"protection key {pkey} has WD=1"

    if rights_why or key_why:
        code = _base_error(cpu, acc) | ERR_P
        if key_why:
            code |= ERR_PK
        # A set in every entry but the leaf (the walk used them all; the leaf was refused).
        return RefResult(PF, error_code=code, ad=_accessed(used[:-1]), why=rights_why or key_why)

    ad = _accessed(used)
    leaf = used[-1]
    if acc.kind == WRITE and not leaf.value & BIT_D:
        ad[leaf.addr] = (leaf.size, leaf.value | BIT_A | BIT_D)
    return RefResult(OK, pa=pa, page_size=page_size, ad=ad)
