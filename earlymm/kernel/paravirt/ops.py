"""``pv_ops.mmu`` and the part of ``pv_ops.cpu`` the page-table code uses (design §7.5).

Model of ``struct pv_mmu_ops`` / ``struct pv_cpu_ops`` (arch/x86/include/asm/paravirt_types.h @ v3.9 and
6.1; seed 002 added the i386 page-table setup hooks in 2.6.21). Linux calls these through wrappers
(``set_pmd()``, ``write_cr3()``, ``paravirt_alloc_pte()`` …) wherever the hypervisor may need to act; a few
call sites call ``native_*`` or store an entry directly on purpose (``kernel/native.py``, and comments at
those sites). The page-table setup hooks belong to the paths that have them (i386's
``pagetable_setup_start/done`` of seed 002, ``x86_init.paging.pagetable_init``) and extend this protocol
there. The kernel model never branches on the backend: it calls ``ctx.pv.mmu.set_pmd(...)``.

Entry values cross this seam in the hypervisor's terms: ``make_pte``/``pte_val`` (and the pmd/pud/p4d/pgd
pairs) convert between what the kernel computes (pfns) and what the tables hold — the identity natively,
pfn↔mfn under Xen PV (spec §5.1). Addresses of entries are kernel virtual addresses.
"""

from __future__ import annotations

import enum
import sys
from array import array
from dataclasses import dataclass
from typing import Protocol

from earlymm.arch.addr import Pfn, PhysAddr, VirtAddr


class SetOp(enum.Enum):
    """Which ``set_*`` op a store is (what a hypervisor backend validates it as)."""

    PTE = "set_pte"
    PMD = "set_pmd"
    PUD = "set_pud"
    P4D = "set_p4d"
    PGD = "set_pgd"


def entry_bytes(vals: array[int], size: int) -> bytes:
    """A run of entry values (``array('Q')``, what ``set_entries`` carries) as a table holds it:
    little-endian entries of ``size`` bytes (4 in i386's 2-level tables, whose values fit 32 bits)."""
    out = vals if size == 8 else array("I", vals)
    if sys.byteorder != "little":
        out = array(out.typecode, out)
        out.byteswap()
    return out.tobytes()


def entries_from_bytes(data: bytes) -> array[int]:
    """Little-endian 64-bit entries (a table's bytes) as a run of entry values: ``entry_bytes``' inverse."""
    out: array[int] = array("Q")
    out.frombytes(data)
    if sys.byteorder != "little":
        out.byteswap()
    return out


class PvMmuOps(Protocol):
    """``pv_ops.mmu``. Every method may fault (it runs on the CPU model) or stop the machine."""

    name: str

    # control registers and TLB
    def read_cr2(self) -> int: ...

    def read_cr3(self) -> int: ...

    def write_cr3(self, cr3: PhysAddr) -> None: ...

    def flush_tlb_user(self) -> None: ...

    def flush_tlb_kernel(self) -> None: ...

    def flush_tlb_one_user(self, addr: VirtAddr) -> None: ...

    # entry stores (``ptr`` is the entry's kernel virtual address, ``val`` already ``make_*``-converted)
    def set_pte(self, ptr: VirtAddr, val: int) -> None: ...

    def set_pmd(self, ptr: VirtAddr, val: int) -> None: ...

    def set_pud(self, ptr: VirtAddr, val: int) -> None: ...

    def set_p4d(self, ptr: VirtAddr, val: int) -> None: ...

    def set_pgd(self, ptr: VirtAddr, val: int) -> None: ...

    def set_entries(self, op: SetOp, ptr: VirtAddr, vals: array[int]) -> None:
        """``len(vals)`` calls of ``op`` at ``ptr``, ``ptr + entry_size``, … with no other memory access in
        between: the simulator's batching of a run of stores (``kernel/table_run.py``). A backend must
        behave exactly as for the single calls."""
        ...

    # entry values: the kernel's view (pfns) ↔ the tables' contents
    def make_entry(self, val: int) -> int:
        """``make_pte``/``make_pmd``/``make_pud``/``make_p4d``/``make_pgd`` (one conversion for all)."""
        ...

    def entry_val(self, raw: int) -> int:
        """``pte_val``/``pmd_val``/``pud_val``/``p4d_val``/``pgd_val``."""
        ...

    def make_entries(self, vals: array[int]) -> array[int]:
        """``make_entry`` of each element, for runs of new leaves."""
        ...

    # a page becomes (or stops being) a page table of a level
    def alloc_pte(self, pfn: Pfn) -> None: ...

    def alloc_pmd(self, pfn: Pfn) -> None: ...

    def alloc_pud(self, pfn: Pfn) -> None: ...

    def alloc_p4d(self, pfn: Pfn) -> None: ...

    def release_pte(self, pfn: Pfn) -> None: ...

    def release_pmd(self, pfn: Pfn) -> None: ...

    def release_pud(self, pfn: Pfn) -> None: ...

    def release_p4d(self, pfn: Pfn) -> None: ...


class NopTableNotices:
    """``paravirt_nop`` for every alloc/release notification: a backend that needs no notice of which
    pages are page tables (bare metal) inherits these and overrides the ones it does need."""

    def alloc_pte(self, pfn: Pfn) -> None:
        return None

    def alloc_pmd(self, pfn: Pfn) -> None:
        return None

    def alloc_pud(self, pfn: Pfn) -> None:
        return None

    def alloc_p4d(self, pfn: Pfn) -> None:
        return None

    def release_pte(self, pfn: Pfn) -> None:
        return None

    def release_pmd(self, pfn: Pfn) -> None:
        return None

    def release_pud(self, pfn: Pfn) -> None:
        return None

    def release_p4d(self, pfn: Pfn) -> None:
        return None


class PvCpuOps(Protocol):
    """The parts of ``pv_ops.cpu`` the boot paths use: CR4 (``set_in_cr4``, ``__flush_tlb_global`` on
    v3.9) and the IDT (``load_idt``, ``write_idt_entry`` — Xen turns them into its trap table)."""

    def read_cr4(self) -> int: ...

    def write_cr4(self, cr4: int) -> None: ...

    def load_idt(self, base: VirtAddr, limit: int) -> None: ...

    def write_idt_entry(self, idt: VirtAddr, vector: int, lo: int, hi: int) -> None:
        """Store the 16-byte gate (``lo``, ``hi``) as entry ``vector`` of the table at ``idt``."""
        ...


@dataclass
class PvOps:
    """``pv_ops``: the backend's MMU and CPU operations; a backend may rebind them during boot (Xen's
    ``xen_post_allocator_init`` does)."""

    mmu: PvMmuOps
    cpu: PvCpuOps
    paravirt_enabled: bool = False  # pv_info.paravirt_enabled: not on bare metal (v3.9 skips the EBDA then)
