"""Leaves merged into runs, with effective rights, and the JSON form of a dump.

A run is a stretch of consecutive leaves that continue each other in both virtual and physical
address, with the same page size, the same attribute bits and the same *effective* rights — user and
write ANDed over every level of the walk, execute-disable ORed (spec §1.5), which is what the CPU
enforces and what ``info tlb`` (leaf flags only) cannot show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earlymm.arch.entry import Entry
from earlymm.tools.ptdump.engine import Leaf, Note, Tree
from earlymm.tools.ptdump.semantics import Semantics


@dataclass(frozen=True, slots=True)
class LeafRun:
    va: int
    pa: int
    size: int
    page_size: int
    depth: int
    flags: int  # the leaf's attribute bits (address bits removed)
    user: bool
    write: bool
    nx: bool
    count: int

    @property
    def end(self) -> int:
        return self.va + self.size


def effective(sem: Semantics, acc: int, xd: int) -> tuple[bool, bool, bool]:
    """(user, write, nx) of a leaf from the AND/OR of its walk (``engine.Leaf`` acc and xd)."""
    return bool(acc & 4), bool(acc & 2), bool(sem.nxe and xd >> 63)


def merge(sem: Semantics, leaves: list[Leaf]) -> list[LeafRun]:
    rows = sem.rows
    fmask = [sem.flag_bits(r) for r in rows]
    out: list[LeafRun] = []
    prev: LeafRun | None = None
    for va, e, depth, acc, xd in leaves:
        row = rows[depth]
        pa = sem.leaf_pa(row, e)
        flags = e & fmask[depth]
        user, write, nx = effective(sem, acc, xd)
        if (prev is not None and prev.depth == depth and prev.end == va and prev.pa + prev.size == pa
                and prev.flags == flags and (prev.user, prev.write, prev.nx) == (user, write, nx)):
            prev = LeafRun(prev.va, prev.pa, prev.size + row.lsize, prev.page_size, depth, flags, user, write, nx,
                           prev.count + 1)
            out[-1] = prev
            continue
        prev = LeafRun(va, pa, row.lsize, row.lsize, depth, flags, user, write, nx, 1)
        out.append(prev)
    return out


def note_json(n: Note) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": n.kind, "va": f"{n.start:#x}", "end": f"{n.end:#x}", "detail": n.detail}
    if n.leaves:
        d["leaves"] = n.leaves
    return d


def space_json(tree: Tree, leaves: list[Leaf], cr3: int) -> dict[str, Any]:
    sem = tree.sem
    runs = merge(sem, leaves)
    rows = sem.rows
    names: dict[tuple[int, int], list[str]] = {}  # flag names per (flags, depth): few distinct values

    def flag_names(flags: int, depth: int) -> list[str]:
        key = (flags, depth)
        if key not in names:
            names[key] = Entry(flags, rows[depth].level, sem.mode).flag_names(leaf=True)
        return names[key]

    return {
        "cr3": f"{cr3:#x}",
        "mode": sem.mode.value,
        "top_table": f"{tree.root_addr:#x}",
        "tables_read": tree.tables,
        "leaves": tree.leaves,
        "runs": [{
            "va": f"{r.va:#x}", "pa": f"{r.pa:#x}", "size": f"{r.size:#x}", "page_size": f"{r.page_size:#x}",
            "level": rows[r.depth].level.entry_name, "leaves": r.count, "flags": f"{r.flags:#x}",
            "flag_names": flag_names(r.flags, r.depth),
            "user": r.user, "write": r.write, "nx": r.nx,
        } for r in runs],
        "notes": [note_json(n) for n in tree.notes],
    }
