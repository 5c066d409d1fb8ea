"""Which physical pages are page tables at a given moment, what Linux calls them, and which level each is.

A table is known from one of four sources, and its ``how`` says which: the kernel image's static tables
(head_64.S / head.S symbols, placed by the load address), an allocation the kernel announced
(``early_dynamic_pgts[n]`` handed out for a level by ``early_make_pgtable``, an ``alloc_low_pages`` page),
a link (a recorded store made an entry of a table of known level point at it: it is one level lower),
or the tables in use when tracing starts (the boot loader's, Xen's bootstrap L4–L1). A page that is handed
out again starts a new *epoch*: the ``Table`` object of the pool page's previous use keeps its history.

VA ranges are derived from the links recorded during an epoch (all of them: two entries pointing at one
page — the switchover map's aliasing — give the page two VA bases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

PAGE = 4096
MAX_ALIASES = 8  # VA bases kept per table (espfix-like fan-in stays bounded)
MAX_LINKS = 16


@dataclass(eq=False)
class Table:
    """One epoch of one page-table page."""

    name: str
    pa: int  # the frame's address in the machine's memory (a machine address under Xen)
    level: int | None  # hardware level: 1 = PTE/PT … 5 = PML5; None until a link says
    how: str  # how the level is known: "symbol", "allocation", "linked from X[i]", "CR3", "Xen type", …
    entry_size: int = 8
    root: bool = False
    pfn: int | None = None  # the guest's pfn of the frame under Xen PV (pa is then the mfn's address)
    links: list[tuple[Table, int]] = field(default_factory=list)
    use: int = 1  # which use of this page as a table (a pool page handed out again: 2, 3 …)

    def link(self, parent: Table, index: int) -> None:
        if len(self.links) < MAX_LINKS and not any(p is parent and i == index for p, i in self.links):
            self.links.append((parent, index))

    def unlink(self, parent: Table, index: int) -> None:
        self.links = [(p, i) for p, i in self.links if not (p is parent and i == index)]

    def span(self) -> int:
        """Bytes of VA one entry of this table maps."""
        assert self.level is not None
        bits = 10 if self.entry_size == 4 else 9
        return 1 << (12 + bits * (self.level - 1))

    def bases(self, memo: dict[int, list[tuple[int, int]]] | None = None) -> list[tuple[int, int]]:
        """(VA base, root level) of each place this table sits in a tree, through the recorded links, at
        most MAX_ALIASES. Only links from a higher level count, so no cycle (a self-map) is followed.
        ``memo``: bases already computed in this pass (the links do not change during it)."""
        if self.root:
            return [(0, self.level or 0)]
        if memo is not None and id(self) in memo:
            return memo[id(self)]
        out: list[tuple[int, int]] = []
        for parent, index in self.links:
            if parent.level is None or parent.level <= (self.level or 0):
                continue
            for base, top in parent.bases(memo):
                b = (base + index * parent.span(), top)
                if b not in out:
                    out.append(b)
                if len(out) >= MAX_ALIASES:
                    break
        if memo is not None:
            memo[id(self)] = out
        return out


def canonical(va: int, top: int, entry_size: int) -> int:
    """Sign-extend a VA by the width of a tree whose root is at level ``top`` (none for 32-bit)."""
    if entry_size == 4 or top <= 3:
        return va
    width = 12 + 9 * top
    va &= (1 << width) - 1
    return va | ((-1 << width) & ((1 << 64) - 1)) if va >> (width - 1) & 1 else va


class Registry:
    """pfn → the current epoch of that page-table page."""

    def __init__(self) -> None:
        self.by_pfn: dict[int, Table] = {}
        self.epochs: list[Table] = []
        self.uses: dict[int, int] = {}

    def get(self, pfn: int) -> Table | None:
        return self.by_pfn.get(pfn)

    def register(self, table: Table) -> Table:
        self.uses[table.pa >> 12] = table.use = self.uses.get(table.pa >> 12, 0) + 1
        self.by_pfn[table.pa >> 12] = table
        self.epochs.append(table)
        return table

    def forget(self, pfn: int) -> None:
        self.by_pfn.pop(pfn, None)


class TracerPort(Protocol):
    """What the table bookkeeping (``known.py``) needs of the tracer that owns the registry."""

    registry: Registry
    arch: str
    ctx: Any
    xen_hv: Any
    loader_pfns: list[int]
    root: int

    def new_table(self, name: str, pa: int, level: int | None, how: str, *, root: bool = False,
                  entry_size: int | None = None) -> Table: ...

    def top_level(self) -> int: ...

    def load_delta(self) -> int: ...

    def machine(self, pa: int) -> int: ...
