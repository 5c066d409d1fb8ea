"""What the simulated Xen tells the timeline: hypercalls, console lines, pins and validations, emulated
page-table writes (Xen vocabulary: mfn, pfn)."""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.hw.events import Event


@dataclass(frozen=True, slots=True)
class Hypercall(Event):
    """``calls`` hypercalls of one kind with the same outcome (a batch of single calls folds into one)."""

    name: str
    detail: str
    calls: int
    rc: int


@dataclass(frozen=True, slots=True)
class XenConsole(Event):
    text: str


@dataclass(frozen=True, slots=True)
class TableValidated(Event):
    """A frame took its first Ln type reference: its entries were checked (``alloc_lN_table``)."""

    mfn: int
    pfn: int
    level: int
    entries: int


@dataclass(frozen=True, slots=True)
class TablePinned(Event):
    mfn: int
    pfn: int
    level: int
    pinned: bool


@dataclass(frozen=True, slots=True)
class PtwrEmulated(Event):
    """A guest store to a read-only L1 page, validated and performed by Xen (``ptwr_emulated_update``)."""

    va: int
    mfn: int
    index: int
    value: int
