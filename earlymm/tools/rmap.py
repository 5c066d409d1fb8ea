"""Who maps this physical address: every virtual address that reaches it, in one address space.

The search runs over the ptdump engine's table DAG (``engine.build``, the CPU's reading): each (table,
level) is read and searched once, and what a table contributes is kept relative to its base, so a table
used from many places (espfix, arch/x86/kernel/espfix_64.c @ v6.1: ESPFIX_PUD_CLONES 4 PUD entries → one
PMD page whose 512 entries → one PTE page whose ESPFIX_PTE_CLONES 32 entries → one stack page, 65,536 VAs)
costs one visit. Hits are *groups*: VAs whose walks read the same tables and the same entry values, differing only
in the indices — so they have the same rights and the same page. espfix's aliases are one group with a count
of 65,536; a table that maps itself through every entry is a group of 512⁴ — counted, never enumerated.

A group keeps its first and last VA, its count and its first ``samples`` VAs (each one's path follows from
the tables and the VA). At most ``MAX_GROUPS`` groups are kept per table: beyond that, the rest of a table's
hits merge into one group whose walks differ (``mixed``). A search that would take more than ``MAX_WORK``
merge steps stops and says so. Tables that could not be read (not in the image, beyond ``max_tables``) make
the answer incomplete; they are listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earlymm.tools.ptdump.engine import HOLE, LEAF, SKIPPED, TABLE, Node, Tree
from earlymm.tools.ptdump.semantics import Semantics

MAX_GROUPS = 256
MAX_WORK = 20_000_000
SAMPLES = 64  # enough for --max-aliases up to this many listed one by one

Steps = tuple[tuple[int, int], ...]  # (table address, entry value) per level, top first


@dataclass(slots=True)
class Group:
    steps: Steps
    first: int  # offsets from the base of the table where the group was made (absolute at the root)
    last: int
    count: int
    samples: list[int]
    mixed: bool = False  # members' walks differ (merged past MAX_GROUPS); ``steps`` are the first's


@dataclass(frozen=True, slots=True)
class PathStep:
    level: str  # SDM name: PML4, PDPT, …
    table: int
    index: int
    entry: int


@dataclass(frozen=True, slots=True)
class Mapping:
    """One VA (``count`` 1) or a group of aliases mapping the physical address."""

    va: int  # of the byte at the physical address (the first alias)
    last_va: int
    count: int
    samples: tuple[int, ...]
    page_va: int
    page_pa: int
    page_size: int
    user: bool
    write: bool
    nx: bool
    path: tuple[PathStep, ...]  # the first alias's walk
    mixed: bool

    def path_of(self, va: int, sem: Semantics) -> tuple[PathStep, ...]:
        """The walk of another member: same tables and entries, the member's own indices."""
        if self.mixed:
            return self.path
        return tuple(PathStep(s.level, s.table, (va >> row.shift) & (row.entries - 1), s.entry)
                     for s, row in zip(self.path, sem.rows, strict=False))


@dataclass
class Search:
    mappings: list[Mapping]
    unread: list[int] = field(default_factory=list)  # tables that could not be read (sorted, distinct)
    capped: bool = False  # the table limit stopped the DAG: some tables were not walked
    stopped: bool = False  # MAX_WORK reached

    @property
    def complete(self) -> bool:
        return not (self.unread or self.capped or self.stopped)


class _Budget(Exception):
    pass


MIXED: Steps = ((-1, -1),)  # the key of a table's overflow group (walks differ among its members)


def _merge(into: dict[Steps, Group], steps: Steps, base: int, g: Group) -> None:
    """Add ``g`` (relative to a child table) at offset ``base`` under ``steps``. Past ``MAX_GROUPS`` keys a
    table's new walks go to its one overflow group; samples are only copied while the target has room (a
    full group of 65,536 aliases costs a counter update per use)."""
    key = MIXED if g.mixed else steps
    have = into.get(key)
    if have is None and key is not MIXED and len(into) >= MAX_GROUPS - 1:
        key = MIXED
        have = into.get(key)
    if have is None:
        into[key] = Group(steps, base + g.first, base + g.last, g.count, [base + v for v in g.samples],
                          key is MIXED)
        return
    have.count += g.count
    have.first, have.last = min(have.first, base + g.first), max(have.last, base + g.last)
    if len(have.samples) < SAMPLES:
        have.samples = sorted(have.samples + [base + v for v in g.samples[:SAMPLES]])[:SAMPLES]


def search(tree: Tree, pa: int) -> Search:
    """Every VA of ``tree`` that maps physical ``pa``, grouped (see the module docstring)."""
    sem = tree.sem
    rows = sem.rows
    memo: dict[int, list[Group]] = {}
    unread: set[int] = set()
    work = [0]

    def visit(node: Node) -> list[Group]:
        got = memo.get(id(node))
        if got is not None:
            return got
        row = rows[node.depth]
        groups: dict[Steps, Group] = {}
        for idx, kind, e, child in node.items:
            base = idx << row.shift
            if kind == LEAF:
                lpa = sem.leaf_pa(row, e)
                if lpa <= pa < lpa + row.lsize:
                    _merge(groups, ((node.table, e),), base, Group((), pa - lpa, pa - lpa, 1, [pa - lpa]))
            elif kind == TABLE:
                assert child is not None
                sub = visit(child)
                work[0] += len(sub)
                if work[0] > MAX_WORK:
                    raise _Budget
                here = (node.table, e)
                for g in sub:
                    _merge(groups, (here, *g.steps), base, g)
            elif kind in (HOLE, SKIPPED):
                unread.add(e & row.taddr)
            # BAD (reserved bits) and not-present entries map nothing
        out = list(groups.values())
        memo[id(node)] = out
        return out

    result = Search([], capped=tree.capped)
    if tree.root is None:
        result.unread = [tree.root_addr]
        return result
    try:
        top = visit(tree.root)
    except _Budget:
        result.stopped = True
        top = []
    result.unread = sorted(unread)
    result.mappings = [_mapping(sem, g, pa) for g in top]
    result.mappings.sort(key=lambda m: m.va)
    return result


def _canon(sem: Semantics, off: int) -> int:
    half = (sem.rows[0].span * sem.rows[0].entries) >> 1
    return off | sem.canon_high if sem.canon_high and off >= half else off


def _mapping(sem: Semantics, g: Group, pa: int) -> Mapping:
    rows = sem.rows
    acc, xd = -1, 0
    path = []
    va = _canon(sem, g.first)
    for depth, (table, e) in enumerate(g.steps):
        row = rows[depth]
        if row.rights:
            acc &= e
            xd |= e
        path.append(PathStep(row.level.name, table, (va >> row.shift) & (row.entries - 1), e))
    leaf_row, leaf = rows[len(g.steps) - 1], g.steps[-1][1]
    page_pa = sem.leaf_pa(leaf_row, leaf)
    return Mapping(va, _canon(sem, g.last), g.count, tuple(_canon(sem, v) for v in g.samples),
                   va - (pa - page_pa), page_pa, leaf_row.lsize, bool(acc & 4), bool(acc & 2),
                   bool(sem.nxe and xd >> 63), tuple(path), g.mixed)

