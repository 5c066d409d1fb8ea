"""Events the kernel model emits on the machine's trace (the hardware ones are in ``hw.events``)."""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.hw.events import Event


@dataclass(frozen=True, slots=True)
class PhaseEntered(Event):
    """The boot path entered ``phase`` (``startup_64``, ``setup_arch`` …)."""

    phase: str


@dataclass(frozen=True, slots=True)
class PoolAlloc(Event):
    """``early_dynamic_pgts[index]`` handed out as a table for ``level`` while mapping ``va``."""

    index: int
    level: str
    va: int
    phys: int


@dataclass(frozen=True, slots=True)
class PoolReset(Event):
    """``reset_early_page_tables``: the ``resets``-th time, ``used`` pool pages reclaimed."""

    resets: int
    used: int


@dataclass(frozen=True, slots=True)
class EarlyMapping(Event):
    """``early_make_pgtable`` wrote one PMD entry (merged) or a whole PMD page (RFC)."""

    va: int
    entry: int
    entries: int


@dataclass(frozen=True, slots=True)
class HandlerOutcome(Event):
    """What the early exception handler did with a fault at ``cr2``."""

    vector: int
    cr2: int
    outcome: str  # "mapped", "declined", "fixup", "panic", "halt"


@dataclass(frozen=True, slots=True)
class ConsoleLine(Event):
    """A line the kernel printed (``printk`` at the boot console)."""

    text: str


@dataclass(frozen=True, slots=True)
class LowPageAlloc(Event):
    """``alloc_low_pages``: one page-table page for the final direct map."""

    pa: int
    source: str  # "brk" or "memblock"


@dataclass(frozen=True, slots=True)
class DirectMapRange(Event):
    """``kernel_physical_mapping_init`` over one ``split_mem_range`` range."""

    start: int
    end: int
    page_size: str


@dataclass(frozen=True, slots=True)
class RunEnded(Event):
    """The last event of a run: how it ended (booted, stopped, panic, halt, livelock, triple_fault …)."""

    outcome: str
    reason: str


@dataclass(frozen=True, slots=True)
class Note(Event):
    """A step worth showing in the timeline (``cleanup_highmap``, ``load_cr3``, IDT changes …)."""

    what: str
