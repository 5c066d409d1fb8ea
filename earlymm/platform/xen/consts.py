"""Xen's public interface and a few internals the model needs (xen/include/public/xen.h, arch-x86/xen-x86_64.h,
xen/include/asm-x86/mm.h @ Xen 4.2; spec §5.1–§5.2). Xen vocabulary: mfn, pfn (the guest's pseudo-physical
frame), L1–L4."""

from __future__ import annotations

import enum

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
DOMID_SELF = 0x7FF0
DOMID_XEN = 0x7FF2
INVALID_M2P_ENTRY = (1 << 64) - 1

# Hypercall numbers (public/xen.h)
HYPERVISOR_set_trap_table = 0
HYPERVISOR_mmu_update = 1
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_mmuext_op = 26
HYPERCALL_NAMES = {0: "set_trap_table", 1: "mmu_update", 14: "update_va_mapping", 26: "mmuext_op"}

# mmu_update commands (low two bits of ``ptr``)
MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2

# update_va_mapping flags
UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_ALL = 4


class MmuExt(enum.IntEnum):
    """``MMUEXT_*`` commands of ``HYPERVISOR_mmuext_op``."""

    PIN_L1_TABLE = 0
    PIN_L2_TABLE = 1
    PIN_L3_TABLE = 2
    PIN_L4_TABLE = 3
    UNPIN_TABLE = 4
    NEW_BASEPTR = 5
    TLB_FLUSH_LOCAL = 6
    INVLPG_LOCAL = 7
    TLB_FLUSH_MULTI = 8
    INVLPG_MULTI = 9
    TLB_FLUSH_ALL = 10
    INVLPG_ALL = 11
    FLUSH_CACHE = 12
    SET_LDT = 13
    NEW_USER_BASEPTR = 15


# Page types (asm-x86/mm.h: the type is the top 4 bits of type_info; then flags; the count below)
PGT_NONE = 0 << 60
PGT_L1 = 1 << 60
PGT_L2 = 2 << 60
PGT_L3 = 3 << 60
PGT_L4 = 4 << 60
PGT_SEG_DESC = 6 << 60
PGT_WRITABLE = 7 << 60
PGT_PINNED = 1 << 59
PGT_VALIDATED = 1 << 58
LEVEL_TYPE = {1: PGT_L1, 2: PGT_L2, 3: PGT_L3, 4: PGT_L4}
TYPE_NAME = {PGT_NONE: "none", PGT_L1: "L1", PGT_L2: "L2", PGT_L3: "L3", PGT_L4: "L4", PGT_WRITABLE: "writable"}

# The 64-bit guest address space (arch-x86/xen-x86_64.h): Xen owns PML4 slots 256–271.
HYPERVISOR_VIRT_START = 0xFFFF_8000_0000_0000
HYPERVISOR_VIRT_END = 0xFFFF_8800_0000_0000
XEN_FIRST_SLOT, XEN_LAST_SLOT = 256, 271
MACH2PHYS_VIRT_START = 0xFFFF_8000_0000_0000  # RO_MPT_VIRT_START: the m2p, read-only to guests
_PAGE_GUEST_KERNEL = 1 << 52  # flags bit 12 in Xen's 24-bit flag encoding: a guest-kernel page

# struct start_info (public/xen.h), 64-bit offsets
SI_MAGIC, SI_NR_PAGES, SI_SHARED_INFO, SI_FLAGS = 0, 32, 40, 48
SI_STORE_MFN, SI_STORE_EVTCHN, SI_CONSOLE_MFN, SI_CONSOLE_EVTCHN = 56, 64, 72, 80
SI_PT_BASE, SI_NR_PT_FRAMES, SI_MFN_LIST, SI_MOD_START, SI_MOD_LEN = 88, 96, 104, 112, 120
SI_CMD_LINE, MAX_GUEST_CMDLINE = 128, 1024
SI_FIRST_P2M_PFN, SI_NR_P2M_FRAMES = 1152, 1160
SIF_PRIVILEGED, SIF_INITDOMAIN = 1 << 0, 1 << 1

# struct shared_info: vcpu_info[0] first; vcpu_info.arch (after evtchn words and pending flags) holds cr2
VCPU_INFO_ARCH_CR2 = 0x10
