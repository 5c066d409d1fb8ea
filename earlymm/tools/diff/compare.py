"""What changed between two address spaces: mappings (as runs) and the table pages behind them.

Each side is listed by the ptdump engine (``engine.expand`` over its table DAG, the CPU's reading, so
aliasing and hostile tables stay bounded) and merged into runs (``runs.merge``: contiguous in VA and PA,
same page size, attributes and effective rights). The two run lists are swept together: every stretch of
VA is *added* (mapped only in B), *removed* (only in A), *changed* (mapped in both, but to another physical
address, with another page size, other attribute bits or other effective rights) or the same. Neighbouring
stretches of one kind that continue each other on both sides are reported as one run, with A's and B's
physical start, page size and rights. The Accessed and Dirty bits are ignored unless asked for: the CPU sets
them on every access, so two moments of one machine differ there everywhere.

Table pages are compared by physical address: a table only one side uses is added or removed; a page both
use, at any level, whose entries differ is changed, with each differing entry (index, old → new). A page
whose level changed (the early page-table pool reuses pages as PUD, then PMD) says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from earlymm.tools.ptdump.engine import DEFAULT_MAX_LEAVES, Node, Note, Tree, expand, read_table
from earlymm.tools.ptdump.runs import LeafRun, merge
from earlymm.tools.ptdump.space import Space

AD = 0x60  # Accessed (bit 5) and Dirty (bit 6) of a leaf


@dataclass(frozen=True, slots=True)
class Side:
    """One side's mapping over a stretch: physical start, page size, attribute bits, rights."""

    pa: int
    page_size: int
    flags: int
    user: bool
    write: bool
    nx: bool

    def at(self, delta: int) -> Side:
        return Side(self.pa + delta, self.page_size, self.flags, self.user, self.write, self.nx)

    def same_kind(self, other: Side) -> bool:
        return (self.page_size, self.flags, self.user, self.write, self.nx) == (
            other.page_size, other.flags, other.user, other.write, other.nx)


@dataclass(slots=True)
class Change:
    kind: str  # "added", "removed", "changed"
    start: int
    end: int
    old: Side | None
    new: Side | None


@dataclass(frozen=True, slots=True)
class TableChange:
    kind: str  # "added", "removed", "changed"
    table: int
    old_levels: tuple[str, ...]
    new_levels: tuple[str, ...]
    entries: tuple[tuple[int, int, int], ...] = ()  # (index, old, new) for a changed page


@dataclass
class Diff:
    mappings: list[Change]
    tables: list[TableChange]
    notes_a: list[Note] = field(default_factory=list)
    notes_b: list[Note] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.mappings and not self.tables


def runs_of(tree: Tree, max_leaves: int, include_ad: bool) -> list[LeafRun]:
    leaves = expand(tree, max_leaves=max_leaves)
    if not include_ad:
        leaves = [(va, e & ~AD, d, acc, xd) for va, e, d, acc, xd in leaves]
    return merge(tree.sem, leaves)


def _side(r: LeafRun, va: int) -> Side:
    return Side(r.pa + (va - r.va), r.page_size, r.flags, r.user, r.write, r.nx)


def compare_runs(a: list[LeafRun], b: list[LeafRun]) -> list[Change]:
    """Sweep two VA-sorted run lists; coalesce stretches that continue each other."""
    cuts = sorted({x for r in (*a, *b) for x in (r.va, r.end)})
    out: list[Change] = []
    ia = ib = 0
    for lo, hi in pairwise(cuts):
        while ia < len(a) and a[ia].end <= lo:
            ia += 1
        while ib < len(b) and b[ib].end <= lo:
            ib += 1
        ra = a[ia] if ia < len(a) and a[ia].va <= lo else None
        rb = b[ib] if ib < len(b) and b[ib].va <= lo else None
        old = _side(ra, lo) if ra is not None else None
        new = _side(rb, lo) if rb is not None else None
        if old is None and new is None:
            continue
        if old is not None and new is not None and old == new:
            continue
        kind = "added" if old is None else "removed" if new is None else "changed"
        prev = out[-1] if out else None
        if prev is not None and prev.kind == kind and prev.end == lo and _continues(prev.old, old, lo - prev.start) \
                and _continues(prev.new, new, lo - prev.start):
            prev.end = hi
            continue
        out.append(Change(kind, lo, hi, old, new))
    return out


def _continues(first: Side | None, now: Side | None, delta: int) -> bool:
    if first is None or now is None:
        return first is None and now is None
    return first.same_kind(now) and first.pa + delta == now.pa


def tables_of(tree: Tree) -> dict[int, tuple[int, ...]]:
    """Table address → depths it is used at, over the whole DAG."""
    seen: dict[int, set[int]] = {}
    visited: set[int] = set()
    stack: list[Node] = [tree.root] if tree.root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        seen.setdefault(node.table, set()).add(node.depth)
        stack.extend(c for _i, _k, _e, c in node.items if c is not None)
    return {t: tuple(sorted(d)) for t, d in seen.items()}


def compare_tables(sa: Space, ta: Tree, sb: Space, tb: Tree) -> list[TableChange]:
    la, lb = tables_of(ta), tables_of(tb)
    rows_a, rows_b = ta.sem.rows, tb.sem.rows
    names_a = {t: tuple(rows_a[d].level.name for d in ds) for t, ds in la.items()}
    names_b = {t: tuple(rows_b[d].level.name for d in ds) for t, ds in lb.items()}
    out: list[TableChange] = []
    for t in sorted(la.keys() | lb.keys()):
        if t not in lb:
            out.append(TableChange("removed", t, names_a[t], ()))
        elif t not in la:
            out.append(TableChange("added", t, (), names_b[t]))
        else:
            qa = read_table(sa.mem, rows_a[la[t][0]], t)
            qb = read_table(sb.mem, rows_b[lb[t][0]], t)
            if qa is None or qb is None:
                continue
            diff = tuple((i, int(x), int(y)) for i, (x, y) in enumerate(zip(qa, qb, strict=False)) if x != y)
            if diff or names_a[t] != names_b[t]:
                out.append(TableChange("changed", t, names_a[t], names_b[t], diff))
    return out


def compare(sa: Space, sb: Space, *, max_tables: int, max_leaves: int = DEFAULT_MAX_LEAVES,
            include_ad: bool = False) -> Diff:
    ta, tb = sa.tree("arch", max_tables=max_tables), sb.tree("arch", max_tables=max_tables)
    mappings = compare_runs(runs_of(ta, max_leaves, include_ad), runs_of(tb, max_leaves, include_ad))
    return Diff(mappings, compare_tables(sa, ta, sb, tb), list(ta.notes), list(tb.notes))
