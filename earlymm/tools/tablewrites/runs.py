"""A run of table entries (one line of the trace) and how a store's entries are cut into runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earlymm.tools.tablewrites.tables import Table

M64 = (1 << 64) - 1
# Steps a loop of stores makes (a page size, or none): two single stores start a run only with one of them
LOOP_STEPS = frozenset({0} | {s & M64 for p in (12, 21, 22, 30) for s in (1 << p, -(1 << p))})


@dataclass(slots=True)
class Run:
    """``count`` consecutive entries of one table written by one function, old and new values each an
    arithmetic progression (``old + k·old_step``, ``new + k·new_step``, modulo 2^64)."""

    seq: int
    phase: str
    function: str
    op: str
    table: Table
    index: int
    count: int
    old: int
    old_step: int
    new: int
    new_step: int
    via: int | None  # the virtual address the kernel stored through (None: a machine address, Xen)
    target: Table | None = None  # the table the first new entry points at, when it does
    pfn_view: bool = False  # Xen PV: values (and steps) as the kernel sees them, pfns for mfns (pte_val)

    def old_at(self, k: int) -> int:
        return (self.old + k * self.old_step) & M64

    def new_at(self, k: int) -> int:
        return (self.new + k * self.new_step) & M64


@dataclass
class Totals:
    stores: int = 0  # memory writes that touched a table
    entries: int = 0  # entries written
    changed: int = 0  # entries whose value changed
    dropped: int = 0  # entries not kept (MAX_RUNS)


def segments(old: np.ndarray, new: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of maximal stretches where old and new both advance by a constant step; a
    stretch of two that does not continue is two single entries."""
    n = len(new)
    if n == 1:
        return [(0, 1)]
    dn, do = new[1:] - new[:-1], old[1:] - old[:-1]
    if bool((dn == dn[0]).all()) and bool((do == do[0]).all()):
        return [(0, n)]
    dnl, dol = dn.tolist(), do.tolist()
    out: list[tuple[int, int]] = []
    i = 0
    while i < n:
        if i == n - 1:
            out.append((i, 1))
            break
        k = i
        while k < n - 1 and dnl[k] == dnl[i] and dol[k] == dol[i]:
            k += 1
        length = k - i + 1
        if length == 2:
            out.append((i, 1))
            i += 1
        else:
            out.append((i, length))
            i += length
    return out
