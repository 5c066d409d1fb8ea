"""The ``native_*`` helpers: what Linux calls at the sites that bypass ``pv_ops`` on purpose, or what the
native backend's ops do (arch/x86/include/asm/special_insns.h, tlbflush.h @ v3.9 and 6.1).

They act on the CPU model directly — under a hypervisor a native instruction is the hypervisor's to
trap or ignore, which is exactly the difference the pv seam exists for (design §7.4 rule 6).
"""

from __future__ import annotations

from earlymm.arch.flags import Cr4
from earlymm.hw.cpu import Cpu


def native_read_cr2(cpu: Cpu) -> int:
    return cpu.regs.cr2


def native_read_cr3(cpu: Cpu) -> int:
    return cpu.regs.cr3


def native_write_cr3(cpu: Cpu, cr3: int) -> None:
    cpu.write_cr3(cr3)


def native_read_cr4(cpu: Cpu) -> int:
    return cpu.regs.cr4


def native_write_cr4(cpu: Cpu, cr4: int) -> None:
    cpu.write_cr4(cr4)


def native_flush_tlb_global(cpu: Cpu) -> None:
    """``native_flush_tlb_global`` (``__flush_tlb_all``'s work): every translation, global ones too.
    6.1 uses INVPCID type 2 where the CPU has it and otherwise toggles CR4.PGE; both have this one
    architectural effect (spec §1.9), which the model applies without the two CR4 writes."""
    cpu.flush_tlb(include_global=True)


def native_tlb_flush_global_cr4(cpu: Cpu) -> None:
    """``__native_tlb_flush_global(cr4)`` as 6.1's ``x86_64_start_kernel`` calls it: clear CR4.PGE and
    set it again (only when PGE is on: the decompressor's global identity entries are what it drops)."""
    cr4 = cpu.regs.cr4
    if cr4 & Cr4.PGE:
        cpu.write_cr4(cr4 & ~int(Cr4.PGE))
        cpu.write_cr4(cr4)


def native_flush_tlb(cpu: Cpu) -> None:
    """``__native_flush_tlb``: reload CR3 (non-global translations)."""
    cpu.write_cr3(cpu.regs.cr3)


def native_flush_tlb_one(cpu: Cpu, addr: int) -> None:
    """``__native_flush_tlb_single``/``flush_tlb_one_user``: INVLPG."""
    cpu.invlpg(addr)
