"""Linux x86-64 constants per kernel profile (spec §2.1–§2.4).

Two profiles: ``v3.9`` (the seeds' kernel, Linux v3.9 / early 2013) and ``current`` (Linux 6.1 as Debian
builds it: the reference configuration is Debian's ``config-6.1.0-*-amd64`` — CONFIG_X86_5LEVEL,
CONFIG_RANDOMIZE_BASE and CONFIG_RANDOMIZE_MEMORY on, so INIT_PGT_BUF_SIZE is 4 × 4 pages and
KERNEL_IMAGE_SIZE 1 GiB — checked against the mid-boot fixtures of that kernel).
Kernel code reads everything era-dependent from a ``Profile``; nothing here is mutable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_SHIFT = 21
PMD_SIZE = 1 << PMD_SHIFT
PUD_SHIFT = 30
PUD_SIZE = 1 << PUD_SHIFT
PGDIR_SHIFT = 39
PGDIR_SIZE = 1 << PGDIR_SHIFT
PTRS_PER_PGD = PTRS_PER_PUD = PTRS_PER_PMD = PTRS_PER_PTE = 512
ISA_END_ADDRESS = 0x10_0000
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
EARLY_DYNAMIC_PAGE_TABLES = 64
COMMAND_LINE_SIZE = 2048
THREAD_SIZE = 8 << 10
NUM_EXCEPTION_VECTORS = 32
KERNEL_CS = 0x10

# pgtable_types.h bit values (spec §1.3 "Linux bit names", §2.4)
_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_PWT = 1 << 3
_PAGE_PCD = 1 << 4
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
_PAGE_PSE = 1 << 7
_PAGE_GLOBAL = 1 << 8
_PAGE_NX = 1 << 63
_KERNPG_TABLE = 0x063
_PAGE_TABLE = 0x067
__PAGE_KERNEL_EXEC = 0x163
__PAGE_KERNEL = __PAGE_KERNEL_EXEC | _PAGE_NX
__PAGE_KERNEL_LARGE_EXEC = 0x1E3
__PAGE_KERNEL_LARGE = __PAGE_KERNEL_LARGE_EXEC | _PAGE_NX
__PAGE_KERNEL_IDENT_LARGE_EXEC = __PAGE_KERNEL_LARGE_EXEC


@dataclass(frozen=True, slots=True)
class Profile:
    """What differs between the modelled kernel versions."""

    name: str
    source_ref: str
    page_offset: int
    physical_mask_shift: int  # PTE_PFN_MASK covers bits (shift-1):12
    max_physmem_bits: int  # MAXMEM = 1 << this
    top_pgt: str  # "early_level4_pgt" or "early_top_pgt"
    init_pgt: str  # "init_level4_pgt" or "init_top_pgt"
    next_early_pgt_initial: int  # 2 in v3.9 (head_64.S used pages 0, 1); 0 in 6.x (__startup_64 allocates)
    trim_kernel_pmds: bool  # ~v5.3: level2_kernel_pgt entries outside _text.._end made not present
    global_flush_in_start_kernel: bool  # 6.x: __native_tlb_flush_global() for decompressor leftovers
    step_shift: int  # init_mem_mapping step growth: <<5 (v3.9) or <<8 (get_new_step_size, 6.x)
    step_grows_on_new_ram: bool  # v3.9: grow when a round mapped more than all before; 6.x: when total >= step
    real_end_pmd_aligned: bool  # 6.x memory_map_top_down: the top block is PMD-aligned (v3.9: page-aligned)
    clear_top_pgt_first: bool  # 6.x clears init_top_pgt before copy_bootdata; v3.9 after load_ucode_bsp
    recursion_halt: int  # the early handler halts when early_recursion_flag reaches this (v3.9: == 2; 6.x: > 2)
    recursion_check_first: bool  # v3.9 checks the flag on entry; 6.x only for faults nothing handled
    panic_format: str  # early_printk's PANIC line
    fixmap_pmds: tuple[int, ...]  # level2_fixmap_pgt entries pointing at level1_fixmap_pgt pages
    init_pgt_buf_pages: int  # INIT_PGT_BUF_SIZE / PAGE_SIZE (BRK page-table buffer)
    early_cr2_native: bool  # 6.x do_early_exception: native_read_cr2(); v3.9 GET_CR2_INTO: the pv op
    p4d_level: bool  # 6.x code has a p4d level (folded at run time in 4-level mode); v3.9 goes pgd → pud
    ucode_loader: Literal["v3.9", "6.1"]  # load_ucode_bsp: v3.9 Intel only; 6.1 Intel, AMD, hypervisor check
    btmap_pmd: int  # level2_fixmap_pgt index of the early_ioremap pmd (bm_pte)
    btmap_page: int  # first btmap page in that pmd
    btmap_slots: int  # FIX_BTMAPS_SLOTS (NR_FIX_BTMAPS = 64 pages each)
    realmode_pages: int  # reserve_real_mode(): the trampoline's size below 1 MiB
    reserve_first_mb: bool  # 6.x setup_arch: memblock_reserve(0, SZ_1M) after reserve_real_mode
    bios_regions: Literal["v3.9", "6.1"]  # reserve_ebda_region (v3.9) or reserve_bios_regions (6.1)
    idt_handlers: str  # early_idt_handlers (v3.9) / early_idt_handler_array (6.x)
    pf_init: str  # early_trap_pf_init (v3.9) / idt_setup_early_pf (6.x)
    pf_entry: str  # the real #PF entry it installs: page_fault (v3.9) / asm_exc_page_fault (6.x)
    idt_stub_size: int  # bytes per early IDT stub (6.x EARLY_IDT_HANDLER_SIZE 9)
    kernel_image_size: int  # KERNEL_IMAGE_SIZE: 512 MiB, or 1 GiB with CONFIG_RANDOMIZE_BASE
    clear_brk: bool  # 6.x clear_bss() also zeroes __brk_base..__brk_limit
    la57: bool  # the kernel can run in 5-level mode (6.x with CONFIG_X86_5LEVEL); check_la57_support reads CR4
    page_offset_l5: int  # __PAGE_OFFSET_BASE_L5
    startup_fn: str  # who fixes the tables up: startup_64 (v3.9 head_64.S) / __startup_64 (6.x head64.c)
    flush_global_after_cr3: bool  # 6.x secondary_startup_64 toggles CR4.PGE right after the CR3 switch
    pti: bool  # 6.x: page-table isolation (pti_check_boottime_disable) drops _PAGE_GLOBAL from kernel maps
    gbpages_need_pse: bool  # 6.x probe_page_size_mask: no PSE, no direct_gbpages
    # struct page and the vmemmap (spec §2.5): the seed-004 address needs a 56-byte struct page with
    # ``private`` at 48; PG_pinned is PG_owner_priv_1 (bit 8 of page->flags).
    split_merge_before_adjust: bool = False  # v3.9 split_mem_range: merge, then adjust_range_page_size_mask
    struct_page_size: int = 64
    page_private_offset: int = 48
    pg_pinned_bit: int = 8
    vmemmap_base: int = 0xFFFF_EA00_0000_0000
    # Where a CONFIG_XEN build's head_64.S .data (init_level4_pgt and the tables after it) sits in the
    # image, as an offset from _text; None: with the other tables at the image's end.
    xen_pgt_offset: int | None = None

    @property
    def maxmem(self) -> int:
        return 1 << self.max_physmem_bits

    @property
    def pte_pfn_mask(self) -> int:
        return ((1 << self.physical_mask_shift) - 1) & ~(PAGE_SIZE - 1)


V39 = Profile(
    name="v3.9", source_ref="linux v3.9", page_offset=0xFFFF_8800_0000_0000, physical_mask_shift=46,
    max_physmem_bits=46, top_pgt="early_level4_pgt", init_pgt="init_level4_pgt", next_early_pgt_initial=2,
    trim_kernel_pmds=False, global_flush_in_start_kernel=False, step_shift=5, fixmap_pmds=(506,),
    init_pgt_buf_pages=5, step_grows_on_new_ram=True, real_end_pmd_aligned=False, clear_top_pgt_first=False,
    recursion_halt=2, recursion_check_first=True,
    panic_format="PANIC: early exception {vector:02x} rip {cs:x}:{rip:x} error {error:x} cr2 {cr2:x}",
    early_cr2_native=False, ucode_loader="v3.9", p4d_level=False, btmap_pmd=510, btmap_page=0, btmap_slots=4,
    realmode_pages=6, reserve_first_mb=False, bios_regions="v3.9", idt_handlers="early_idt_handlers",
    pf_init="early_trap_pf_init", pf_entry="page_fault", idt_stub_size=10, kernel_image_size=512 << 20,
    clear_brk=False, la57=False, page_offset_l5=0, startup_fn="startup_64",
    flush_global_after_cr3=False, pti=False, gbpages_need_pse=False,
    # seed 004: init_level4_pgt at pfn 0x1a0c of a kernel linked at 16 MiB, a 56-byte struct page (§2.5)
    struct_page_size=56, xen_pgt_offset=0xA0C000, split_merge_before_adjust=True,
)
CURRENT = Profile(
    name="current",
    source_ref="linux 6.1 (Debian 6.1.0-*-amd64 config: X86_5LEVEL, RANDOMIZE_BASE, RANDOMIZE_MEMORY)",
    page_offset=0xFFFF_8880_0000_0000, physical_mask_shift=52,
    max_physmem_bits=46, top_pgt="early_top_pgt", init_pgt="init_top_pgt", next_early_pgt_initial=0,
    trim_kernel_pmds=True, global_flush_in_start_kernel=True, step_shift=8, fixmap_pmds=(506, 507),
    init_pgt_buf_pages=16, step_grows_on_new_ram=False, real_end_pmd_aligned=True, clear_top_pgt_first=True,
    recursion_halt=3, recursion_check_first=False,
    panic_format="PANIC: early exception 0x{vector:02x} IP {cs:x}:{rip:x} error {error:x} cr2 0x{cr2:x}",
    early_cr2_native=True, ucode_loader="6.1", p4d_level=True, btmap_pmd=505, btmap_page=0, btmap_slots=8,
    realmode_pages=7, reserve_first_mb=True, bios_regions="6.1", idt_handlers="early_idt_handler_array",
    pf_init="idt_setup_early_pf", pf_entry="asm_exc_page_fault", idt_stub_size=9, kernel_image_size=1 << 30,
    clear_brk=True, la57=True, page_offset_l5=0xFF11_0000_0000_0000, startup_fn="__startup_64",
    flush_global_after_cr3=True, pti=True, gbpages_need_pse=True,
)
PROFILES = {p.name: p for p in (V39, CURRENT)}
