"""What a page-table page *is*, independent of where a build put it: ``early_dynamic_pgts[2]``,
``level1_fixmap_pgt[1]``, ``brk[3]``, ``bm_pte``, or plain RAM (a memblock allocation, named by its
physical address, which a faithful model reproduces exactly). The model's image layout is its own, so
links are compared by these roles, not by table addresses."""

from __future__ import annotations

from dataclasses import dataclass

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
# static tables and how many pages each spans (6.1 head_64.S; level1_fixmap_pgt is FIXMAP_PMD_NUM pages)
TABLES = (("early_top_pgt", 1), ("early_dynamic_pgts", 64), ("init_top_pgt", 1), ("level4_kernel_pgt", 1),
          ("level3_kernel_pgt", 1), ("level2_kernel_pgt", 1), ("level2_fixmap_pgt", 1), ("level1_fixmap_pgt", 2),
          ("bm_pte", 1))


@dataclass(frozen=True)
class Roles:
    spans: tuple[tuple[str, int, int], ...]  # (name, first pa, pages); a name "brk" is the BRK area

    @classmethod
    def from_symbols(cls, symbols: dict[str, int], phys_base: int, pool_pages: int = 64) -> Roles:
        """``symbols``: link-time VAs (kallsyms) of the tables and of ``__brk_base``/``__brk_limit``."""
        def pa(va: int) -> int:
            return va - START_KERNEL_MAP + phys_base

        spans = [(n, pa(symbols[n]), pool_pages if n == "early_dynamic_pgts" else pages)
                 for n, pages in TABLES if n in symbols]
        if "__brk_base" in symbols and "__brk_limit" in symbols:
            spans.append(("brk", pa(symbols["__brk_base"]), (symbols["__brk_limit"] - symbols["__brk_base"]) >> 12))
        return cls(tuple(spans))

    def role(self, pa: int) -> str:
        for name, first, pages in self.spans:
            if first <= pa < first + (pages << 12):
                return name if pages == 1 and name != "brk" else f"{name}[{(pa - first) >> 12}]"
        return f"RAM {pa:#x}"
