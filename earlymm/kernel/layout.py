"""A consistent kernel image layout: the symbol addresses the early-boot code uses (spec §3.2, §3.10).

Real values depend on the build; these are chosen consistently for a kernel linked at
``__START_KERNEL_map + 16 MiB`` (CONFIG_PHYSICAL_START), with page-aligned tables. Changing the pool size
(``EARLY_DYNAMIC_PAGE_TABLES``) is a rebuild, so it moves the symbols after the pool, as it would.
"""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.kernel.consts import NUM_EXCEPTION_VECTORS, PAGE_SIZE, PMD_SIZE, START_KERNEL_MAP, THREAD_SIZE, Profile

LINK_PHYS = 0x100_0000  # CONFIG_PHYSICAL_START
TEXT_VA = START_KERNEL_MAP + LINK_PHYS
IDT_STUB_SIZE = 10  # pushq $0; pushq $vector; jmp early_idt_handler (v3.9 head_64.S)
BRK_SIZE = 192 << 10  # RESERVE_BRK area at the end of the image (__brk_limit − __brk_base of Debian's 6.1)
BSS_SIZE = 256 << 10


@dataclass(frozen=True, slots=True)
class KernelLayout:
    """Link-time virtual addresses of the symbols the model uses (``__START_KERNEL_map`` + link phys)."""

    profile: Profile
    pool_pages: int
    image_size: int
    symbols: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.symbols[name]

    @property
    def text(self) -> int:
        return self.symbols["_text"]

    @property
    def end(self) -> int:
        return self.symbols["_end"]

    @property
    def top_pgt(self) -> int:
        """``early_level4_pgt`` (v3.9) / ``early_top_pgt`` (6.x)."""
        return self.symbols["early_top_pgt"]

    @property
    def init_pgt(self) -> int:
        """``init_level4_pgt`` = ``swapper_pg_dir`` (v3.9) / ``init_top_pgt`` (6.x)."""
        return self.symbols["init_top_pgt"]

    def link_phys(self, name: str) -> int:
        """Compile-time physical address: what the assembler stored in the static tables."""
        return self.symbols[name] - START_KERNEL_MAP


XEN_TABLES = ("init_top_pgt", "level3_ident_pgt", "level2_ident_pgt", "level3_kernel_pgt", "level2_kernel_pgt",
              "level2_fixmap_pgt", "level1_fixmap_pgt", "level1_fixmap_pgt_2")


def build_layout(profile: Profile, pool_pages: int = 64, image_size: int = 24 << 20, *, xen: bool = False
                 ) -> KernelLayout:
    """The image's symbols. ``xen``: a CONFIG_XEN build — head_64.S's .data also holds the identity tables
    (``level3_ident_pgt``, ``level2_ident_pgt``), and there are ``startup_xen``, the hypercall page and
    the Xen variables."""
    if pool_pages < 1:
        raise ValueError("the early page-table pool needs at least one page")
    text = TEXT_VA
    s: dict[str, int] = {"_text": text, "startup_64": text, "secondary_startup_64": text + 0x80,
                         "early_idt_handlers": text + 0x100, "early_idt_handler": text + 0x400,
                         "bad_address": text + 0x500, "x86_64_start_kernel": text + 0x1000,
                         "page_fault": text + 0x2000, "halt_loop": text + 0x2100}
    # Text and read-only data fill the image; the tables, .init.data (the pool), a small .bss and the
    # BRK area sit in its last megabyte or so, so clearing .bss touches only that much memory.
    tail = 0x1_0000 + pool_pages * PAGE_SIZE + BSS_SIZE + BRK_SIZE
    size = (max(image_size, 0x10_0000 + tail) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    data = text + size - tail
    for i, name in enumerate(("init_top_pgt", "level3_kernel_pgt", "level2_kernel_pgt", "level2_fixmap_pgt",
                              "level1_fixmap_pgt", "level1_fixmap_pgt_2", "kernel_vars", "idt_table",
                              "boot_params", "boot_command_line", "level4_kernel_pgt")):
        s[name] = data + i * PAGE_SIZE
    v = s["kernel_vars"]
    for i, name in enumerate(("phys_base", "early_pmd_flags", "next_early_pgt", "early_recursion_flag",
                              "__supported_pte_mask", "max_pfn_mapped")):
        s[name] = v + 8 * i
    s["init_thread_union"] = data + 0xC000  # THREAD_SIZE-aligned
    s["empty_zero_page"] = s["init_thread_union"] + THREAD_SIZE
    s["early_top_pgt"] = s["empty_zero_page"] + PAGE_SIZE
    s["early_dynamic_pgts"] = s["early_top_pgt"] + PAGE_SIZE
    s["__bss_start"] = s["early_dynamic_pgts"] + pool_pages * PAGE_SIZE
    s["bm_pte"] = s["__bss_start"]  # early_ioremap's page of PTEs (__page_aligned_bss)
    s["__bss_stop"] = s["__bss_start"] + BSS_SIZE
    s["__brk_base"] = s["__bss_stop"]
    s["_end"] = s["__brk_limit"] = s["__brk_base"] + BRK_SIZE
    assert s["_end"] == text + size
    if xen:
        _xen_symbols(profile, s)
    if s["_end"] - START_KERNEL_MAP > profile.kernel_image_size:
        # vmlinux.lds.S: ASSERT(_end - LOAD_OFFSET <= KERNEL_IMAGE_SIZE) — such an image does not link
        raise ValueError(f"kernel image of {size:#x} bytes linked at {LINK_PHYS:#x} ends beyond KERNEL_IMAGE_SIZE "
                         f"({profile.kernel_image_size >> 20} MiB): the link would fail (vmlinux.lds.S ASSERT)")
    assert s["early_idt_handlers"] + NUM_EXCEPTION_VECTORS * IDT_STUB_SIZE <= s["early_idt_handler"]
    assert PMD_SIZE > 0
    return KernelLayout(profile, pool_pages, size, s)


def _xen_symbols(profile: Profile, s: dict[str, int]) -> None:
    text = s["_text"]
    if profile.xen_pgt_offset is None:
        raise ValueError(f"the {profile.name} profile has no modelled CONFIG_XEN layout (give --kernel-symbols)")
    base = text + profile.xen_pgt_offset
    for i, name in enumerate(XEN_TABLES):
        s[name] = base + i * PAGE_SIZE
    s["startup_xen"], s["hypercall_page"] = text + 0x3000, text + 0x4000
    for i, name in enumerate(("debug", "int3", "xen_debug", "xen_int3")):
        s[name] = text + 0x2200 + 0x40 * i
    v = s["kernel_vars"]
    for i, name in enumerate(("xen_start_info", "xen_cr3", "xen_current_cr3", "max_pfn")):
        s[name] = v + 0x40 + 8 * i
    s["level3_user_vsyscall"] = s["__bss_start"] + PAGE_SIZE  # mmu.c: a __page_aligned_bss page
    s["xen_dummy_shared_info"] = s["__bss_start"] + 2 * PAGE_SIZE


# The model's names for what a profile calls otherwise (v3.9 and 6.x spell some symbols differently).
def _real_name(profile: Profile, name: str) -> str:
    return {"early_top_pgt": profile.top_pgt, "init_top_pgt": profile.init_pgt,
            "early_idt_handlers": profile.idt_handlers, "page_fault": profile.pf_entry}.get(name, name)


SYMBOLS_NEEDED = ("_text", "_end", "startup_64", "secondary_startup_64", "early_idt_handlers", "x86_64_start_kernel",
                  "page_fault", "early_top_pgt", "early_dynamic_pgts", "init_top_pgt", "level3_kernel_pgt",
                  "level2_kernel_pgt", "level2_fixmap_pgt", "level1_fixmap_pgt", "phys_base", "early_pmd_flags",
                  "next_early_pgt", "early_recursion_flag", "__supported_pte_mask", "max_pfn_mapped", "idt_table",
                  "boot_params", "boot_command_line", "init_thread_union", "empty_zero_page", "bm_pte",
                  "__bss_start", "__bss_stop", "__brk_base", "__brk_limit")


def layout_from_symbols(profile: Profile, symbols: dict[str, int], pool_pages: int = 64) -> KernelLayout:
    """The layout of a real build, from its symbol table (``/proc/kallsyms`` or ``System.map``): every
    table and variable the model touches sits where that kernel has it, so the early faults of a real
    boot (which 2 MiB blocks ``__va`` accesses hit) can be compared one for one."""
    if pool_pages != 64:
        raise ValueError("a real build's early_dynamic_pgts holds EARLY_DYNAMIC_PAGE_TABLES = 64 pages: "
                         "--pool cannot change it")
    missing = [_real_name(profile, n) for n in SYMBOLS_NEEDED if _real_name(profile, n) not in symbols]
    if missing:
        raise ValueError(f"the symbol file lacks {', '.join(missing[:6])}"
                         + (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
    s = {n: symbols[_real_name(profile, n)] for n in SYMBOLS_NEEDED}
    s["level1_fixmap_pgt_2"] = s["level1_fixmap_pgt"] + PAGE_SIZE
    if "level4_kernel_pgt" in symbols:  # 6.x with CONFIG_X86_5LEVEL
        s["level4_kernel_pgt"] = symbols["level4_kernel_pgt"]
    if s["_text"] != TEXT_VA:
        raise ValueError(f"_text at {s['_text']:#x}: the model links the kernel at {TEXT_VA:#x} "
                         "(CONFIG_PHYSICAL_START 16 MiB); give a nokaslr kernel's symbols")
    size = s["_end"] - s["_text"]
    if s["_end"] - START_KERNEL_MAP > profile.kernel_image_size:
        raise ValueError(f"the image ends {s['_end'] - START_KERNEL_MAP:#x} bytes into __START_KERNEL_map, beyond "
                         f"KERNEL_IMAGE_SIZE {profile.kernel_image_size:#x}")
    return KernelLayout(profile, pool_pages, size, s)
