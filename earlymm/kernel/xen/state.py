"""What the Xen PV guest keeps about its hypervisor (arch/x86/xen: ``xen_start_info``, the p2m, the m2p's
size, the multicall batch, ``idt_desc``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class XenGuest:
    start_info: int  # virtual address of start_info (xen_start_info)
    write_cr3_late: bool = False  # the kernel before seed 004's fix: pv write_cr3 = xen_write_cr3 from the start
    bug: str = ""  # a deliberate guest bug of the class Xen catches ("writable-pagetable", "native-cpuid")
    mfn_list: int = 0  # virtual address of the builder's p2m list (the p2m tree's leaves)
    nr_pages: int = 0  # xen_start_info->nr_pages = xen_max_p2m_pfn
    machine_to_phys_nr: int = 0  # entries of the m2p (XENMEM_machphys_mapping)
    post_allocator: bool = False  # xen_post_allocator_init has installed the full ops
    mc: list[tuple[str, Any]] = field(default_factory=list)  # the open multicall batch
    idt_desc: tuple[int, int] | None = None  # the IDT last given to xen_load_idt (base, size)
    shared_info: int = 0  # machine address of shared_info (start_info->shared_info)
