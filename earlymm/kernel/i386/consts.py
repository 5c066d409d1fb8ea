"""Linux 2.6.21 i386 constants: the 3G/1G split, head.S's boot map, the page flags, and the fixmap and
persistent-kmap areas of the reference configuration (spec §1.2–§1.3, §5.6).

Sources: include/asm-i386/page.h, pgtable.h, pgtable-2level-defs.h, pgtable-3level-defs.h, fixmap.h,
highmem.h, kmap_types.h, segment.h and arch/i386/kernel/head.S @ 2.6.21. The fixmap layout depends on the
kernel configuration; ``I386Profile`` names the reference configuration (an SMP distribution kernel:
NR_CPUS 8, local and I/O APIC with MAX_IO_APICS 64, HIGHMEM — 4G without PAE, 64G with it — ACPI with
S3 sleep, PCI_MMCONFIG, M686 so no F00F workaround). Nothing here is mutable.
"""

from __future__ import annotations

from dataclasses import dataclass

U32 = 0xFFFF_FFFF
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_OFFSET = 0xC000_0000  # __PAGE_OFFSET (CONFIG_VMSPLIT_3G)
LOAD_PHYSICAL_ADDR = 0x10_0000  # CONFIG_PHYSICAL_START: 2.6.21's head.S runs where it was linked
INIT_MAP_BEYOND_END = 128 << 10  # head.S: room for the bootmem bitmap beyond the boot page tables
VMALLOC_RESERVE = 128 << 20  # __VMALLOC_RESERVE
MAXMEM = (-PAGE_OFFSET - VMALLOC_RESERVE) & U32  # 896 MiB of lowmem
MAXMEM_PFN = MAXMEM >> PAGE_SHIFT
MAX_NONPAE_PFN = 1 << 20  # 4 GiB
FIXADDR_TOP = 0xFFFF_F000  # __FIXADDR_TOP before any reserve_top_address()
COMMAND_LINE_SIZE = 256  # include/asm-i386/setup.h @ 2.6.21
PARAM_SIZE = 4096
THREAD_SIZE = 8 << 10
IDT_ENTRIES = 256
USER_PTRS_PER_PGD_PAE = 3  # TASK_SIZE / PGDIR_SIZE with 1 GiB pgd entries
KERNEL_PGD_PTRS_PAE = 1

# segment.h @ 2.6.21: GDT_ENTRY_BOOT_CS 2; GDT_ENTRY_KERNEL_CS 12; GDT_ENTRY_DEFAULT_USER_DS 15
BOOT_CS, BOOT_DS = 0x10, 0x18
KERNEL_CS, KERNEL_DS, USER_DS = 0x60, 0x68, 0x7B

# pgtable.h bit values (spec §1.3 "Linux bit names"); _PAGE_NX exists only with PAE
_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080
_PAGE_GLOBAL = 0x100
_PAGE_NX_PAE = 1 << 63
_PAGE_TABLE = 0x067  # P RW USER A D: what one_page_table_init links PTE pages with
_KERNPG_TABLE = 0x063
HEAD_S_FLAGS = 0x007  # head.S's "PRESENT+RW+USER" for its PDEs and PTEs


def page_kernel_exec() -> int:
    """``_PAGE_KERNEL_EXEC`` = P RW D A (before pagetable_init ORs in _PAGE_GLOBAL)."""
    return _PAGE_PRESENT | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED


def page_kernel(pae: bool) -> int:
    """``_PAGE_KERNEL`` = ``_PAGE_KERNEL_EXEC`` | _PAGE_NX (0 without PAE)."""
    return page_kernel_exec() | (_PAGE_NX_PAE if pae else 0)


# kmap_types.h @ 2.6.21 without CONFIG_DEBUG_HIGHMEM: KM_BOUNCE_READ … KM_SOFTIRQ1
KM_TYPE_NR = 13
NR_FIX_BTMAPS = 16


@dataclass(frozen=True, slots=True)
class I386Profile:
    """What the i386 boot path reads of the kernel's version and configuration."""

    name: str
    source_ref: str
    nr_cpus: int
    max_io_apics: int
    fix_acpi_pages: int
    smp: bool  # reserve_bootmem(PAGE_SIZE) for the trampoline; smp_alloc_memory
    acpi_sleep: bool  # acpi_reserve_bootmem(): alloc_bootmem_low(PAGE_SIZE) for the S3 wakeup code
    pci_mmconfig: bool
    paravirt_bootmap: bool = False  # FIX_PARAVIRT_BOOTMAP (2.6.23's CONFIG_PARAVIRT, for Xen's shared_info)
    top_reserve: int = 0  # reserve_top_address(): bytes above __FIXADDR_TOP a hypervisor keeps (Xen)

    @property
    def fixaddr_top(self) -> int:
        """``__FIXADDR_TOP``: 0xfffff000, or ``-reserve - PAGE_SIZE`` after ``reserve_top_address(reserve)``."""
        return (-self.top_reserve - PAGE_SIZE) & U32 if self.top_reserve else FIXADDR_TOP

    @property
    def maxmem_pfn(self) -> int:
        """MAXMEM = -__PAGE_OFFSET - __VMALLOC_RESERVE; ``reserve_top_address`` adds its reserve to the latter."""
        return ((-PAGE_OFFSET - VMALLOC_RESERVE - self.top_reserve) & U32) >> PAGE_SHIFT

    # -- fixmap.h: enum fixed_addresses ---------------------------------------------------------------
    @property
    def fix_kmap_begin(self) -> int:
        """FIX_HOLE, FIX_VDSO, FIX_APIC_BASE, FIX_IO_APIC_BASE_0 … _END, then FIX_KMAP_BEGIN."""
        return 3 + self.max_io_apics

    @property
    def end_of_permanent_fixed_addresses(self) -> int:
        kmap_end = self.fix_kmap_begin + KM_TYPE_NR * self.nr_cpus - 1
        acpi_end = kmap_end + self.fix_acpi_pages  # FIX_ACPI_BEGIN … FIX_ACPI_END
        return acpi_end + 1 + (1 if self.pci_mmconfig else 0) + (1 if self.paravirt_bootmap else 0)

    @property
    def fix_paravirt_bootmap(self) -> int:
        """FIX_PARAVIRT_BOOTMAP: the last permanent slot (after FIX_PCIE_MCFG), fixmap.h @ 2.6.23."""
        assert self.paravirt_bootmap
        return self.end_of_permanent_fixed_addresses - 1

    @property
    def end_of_fixed_addresses(self) -> int:
        """… FIX_BTMAP_END = __end_of_permanent_fixed_addresses, FIX_BTMAP_BEGIN, FIX_WP_TEST, end."""
        return self.end_of_permanent_fixed_addresses + NR_FIX_BTMAPS + 1

    def fix_to_virt(self, idx: int) -> int:
        """``__fix_to_virt(x)`` = FIXADDR_TOP - (x << PAGE_SHIFT)."""
        return (self.fixaddr_top - (idx << PAGE_SHIFT)) & U32

    @property
    def fixaddr_boot_start(self) -> int:
        return (self.fixaddr_top - (self.end_of_fixed_addresses << PAGE_SHIFT)) & U32

    # -- highmem.h: the persistent kmap area below the fixmap -----------------------------------------
    @staticmethod
    def last_pkmap(pae: bool) -> int:
        return 512 if pae else 1024

    def pkmap_base(self, pae: bool, pmd_size: int) -> int:
        """``PKMAP_BASE`` = (FIXADDR_BOOT_START - PAGE_SIZE * (LAST_PKMAP + 1)) & PMD_MASK."""
        return (self.fixaddr_boot_start - PAGE_SIZE * (self.last_pkmap(pae) + 1)) & ~(pmd_size - 1) & U32


V2621 = I386Profile(
    name="2.6.21", source_ref="linux 2.6.21 (i386; commit b239fb25, seed 002)", nr_cpus=8, max_io_apics=64,
    fix_acpi_pages=4, smp=True, acpi_sleep=True, pci_mmconfig=True,
)
I386_PROFILES = {p.name: p for p in (V2621,)}
