"""Events of the i386 boot path: which entries a kernel function (or a paravirt hook) stores, which table
pages it allocates and which present ones it keeps, what it tells the hypervisor, and which entries of
the directory the CPU is running on change under it."""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.hw.events import Event


@dataclass(frozen=True, slots=True)
class EntryStore(Event):
    """One page-table entry stored by ``fn`` through ``op`` (``set_pgd``, ``set_pmd``, ``set_pte``,
    ``memset``): ``table`` is the table page's physical address (HEX), ``index`` the entry, ``old`` what
    it held before."""

    fn: str
    op: str
    table: int
    index: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class LeafRun(Event):
    """``count`` leaf entries from ``index`` of one table page rewritten by ``fn`` (``level`` "pte", or
    "pmd" for large pages); ``present`` of them were present before; ``entry`` is the first new value."""

    fn: str
    level: str
    table: int
    index: int
    count: int
    present: int
    entry: int


@dataclass(frozen=True, slots=True)
class TablePage(Event):
    """A page-table page for ``va``'s range: ``allocated`` (bootmem) or ``kept`` (an entry was present,
    so the builder used the page it points at)."""

    fn: str
    level: str
    action: str
    pa: int
    va: int


@dataclass(frozen=True, slots=True)
class PvNotify(Event):
    """A paravirt notification without a store: ``paravirt_alloc_pd``/``paravirt_alloc_pt`` of ``pfn``."""

    fn: str
    op: str
    pfn: int


@dataclass(frozen=True, slots=True)
class LiveEntryChanged(Event):
    """A store into the page the CPU uses as its 32-bit page directory right now changed directory entry
    ``index`` (4 bytes) from ``old`` to ``new`` — e.g. a PAE entry written into head.S's live directory."""

    fn: str
    index: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class BootmemAlloc(Event):
    """``alloc_bootmem_low_pages`` / ``alloc_bootmem_low``: one page for ``purpose``."""

    pa: int
    purpose: str
