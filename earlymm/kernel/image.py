"""The kernel image as the build produced it: the static page tables of head_64.S (spec §3.2), linked
for physical address 16 MiB, copied by the boot loader to wherever it loads the kernel.

Pointer entries hold compile-time physical addresses (symbol − ``__START_KERNEL_map`` + flags); they are
wrong by ``load_delta`` until ``startup_64`` fixes them up — which is the point.
"""

from __future__ import annotations

import struct
from typing import Protocol

from earlymm.kernel.consts import (
    __PAGE_KERNEL_IDENT_LARGE_EXEC,
    __PAGE_KERNEL_LARGE_EXEC,
    _KERNPG_TABLE,
    _PAGE_TABLE,
    PAGE_SIZE,
    PMD_SIZE,
    START_KERNEL_MAP,
)
from earlymm.kernel.layout import KernelLayout

EARLY_PMD_FLAGS = 0x0E3  # __PAGE_KERNEL_LARGE & ~(_PAGE_GLOBAL | _PAGE_NX)


def _page(entries: dict[int, int]) -> bytes:
    buf = bytearray(PAGE_SIZE)
    for i, v in entries.items():
        struct.pack_into("<Q", buf, 8 * i, v)
    return bytes(buf)


class ImageSink(Protocol):
    """Where the loader copies the image: physical memory, or a domain's pseudo-physical frames."""

    def write(self, pa: int, data: bytes) -> None: ...


def install_image(mem: ImageSink, layout: KernelLayout, load_at: int) -> None:
    """Copy the image's initialised data to physical ``load_at`` (only the pages that are not zero)."""
    lp = layout.link_phys

    def at(name: str) -> int:
        return load_at + layout[name] - layout.text

    mem.write(at("early_top_pgt"), _page({511: lp("level3_kernel_pgt") + _PAGE_TABLE}))
    if layout.profile.la57:  # head_64.S @ 6.1: .fill 511,8,0; .quad level3_kernel_pgt + _PAGE_TABLE
        mem.write(at("level4_kernel_pgt"), _page({511: lp("level3_kernel_pgt") + _PAGE_TABLE}))
    mem.write(at("level3_kernel_pgt"), _page({510: lp("level2_kernel_pgt") + _KERNPG_TABLE,
                                              511: lp("level2_fixmap_pgt") + _PAGE_TABLE}))
    pmds = layout.profile.kernel_image_size // PMD_SIZE  # PMDS(0, __PAGE_KERNEL_LARGE_EXEC, KERNEL_IMAGE_SIZE/PMD_SIZE)
    mem.write(at("level2_kernel_pgt"), _page({i: i * PMD_SIZE + __PAGE_KERNEL_LARGE_EXEC for i in range(pmds)}))
    fix = layout.profile.fixmap_pmds
    l1 = ("level1_fixmap_pgt", "level1_fixmap_pgt_2")
    mem.write(at("level2_fixmap_pgt"), _page({idx: lp(l1[k]) + _PAGE_TABLE for k, idx in enumerate(fix)}))
    if "level3_ident_pgt" in layout.symbols:  # CONFIG_XEN: head_64.S's identity tables (spec §3.2)
        ident = lp("level3_ident_pgt") + _KERNPG_TABLE
        l4_page_offset = (layout.profile.page_offset >> 39) & 511
        mem.write(at("init_top_pgt"), _page({0: ident, l4_page_offset: ident,
                                             511: lp("level3_kernel_pgt") + _PAGE_TABLE}))
        mem.write(at("level3_ident_pgt"), _page({0: lp("level2_ident_pgt") + _KERNPG_TABLE}))
        mem.write(at("level2_ident_pgt"), _page({i: i * PMD_SIZE + __PAGE_KERNEL_IDENT_LARGE_EXEC
                                                 for i in range(512)}))
    # The variables' initial values, each at its own symbol with its C type's size.
    initial = {"phys_base": (0, 8), "early_pmd_flags": (EARLY_PMD_FLAGS, 8),
               "next_early_pgt": (layout.profile.next_early_pgt_initial, 4), "early_recursion_flag": (0, 4),
               "__supported_pte_mask": ((1 << 64) - 1, 8), "max_pfn_mapped": (0, 8)}
    for name, (value, size) in initial.items():
        mem.write(at(name), value.to_bytes(size, "little"))
    assert layout.text - START_KERNEL_MAP == lp("_text")
