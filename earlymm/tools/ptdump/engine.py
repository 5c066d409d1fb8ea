"""Enumerate every present leaf of an address space, bounded on aliasing and hostile tables.

The tables are read once into a DAG of ``Node``s, one per (table address, level): a table that several
entries point at (Linux's espfix area maps one page through 65,536 leaves; a hostile table may point
every entry at itself) is read and classified once and shared. Because every step goes one level
down, the DAG has no cycles even when the tables do, and it has at most ``max_tables`` nodes.

``expand`` then lists leaves in VA order by replaying shared subtrees at their VA offsets. That is
what QEMU prints, so it is done in full while the total leaf count (known exactly from the DAG)
stays within ``max_leaves``; beyond that, a subtree seen before is replaced by one ``Note`` saying
what was collapsed, and a leaf budget stops the rest. Unreadable tables (holes in the image),
entries with reserved bits, and tables beyond the cap become ``Note``s as well, never exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress

from earlymm.hw.memory import PhysMem
from earlymm.tools.ptdump.semantics import Row, Semantics

# Item kinds in a node, and note kinds in the expansion.
LEAF, TABLE, NONPRESENT, BAD, HOLE, SKIPPED = range(6)
KIND_NAMES = ("leaf", "table", "not-present", "reserved-bits", "unreadable", "not-walked")
COLLAPSED, BUDGET = "collapsed", "leaf-budget"

DEFAULT_MAX_TABLES = 1 << 15
DEFAULT_MAX_LEAVES = 1 << 22

Item = tuple[int, int, int, "Node | None"]  # (index, kind, entry, child)


@dataclass(eq=False, slots=True)
class Node:
    """One table read at one level. ``items`` lists its non-zero entries in index order."""

    table: int
    depth: int
    items: list[Item]
    leaves: int = 0  # present leaves below, counting every replay of a shared subtree


@dataclass(frozen=True, slots=True)
class Note:
    """Something in ``[start, end)`` that is not a plain leaf: unreadable, faulting, not walked, collapsed."""

    kind: str
    start: int
    end: int
    detail: str
    leaves: int = 0  # leaves not listed because of it (collapsed / budget notes)


@dataclass(slots=True)
class Tree:
    """The table DAG under one top-level table, as ``build`` read it with one tool's reading."""

    sem: Semantics
    root_addr: int
    root: Node | None  # None: the top table itself is unreadable
    tables: int = 0
    capped: bool = False
    notes: list[Note] = field(default_factory=list)  # filled by ``expand``

    @property
    def leaves(self) -> int:
        return self.root.leaves if self.root is not None else 0


def read_table(mem: PhysMem, row: Row, addr: int) -> Sequence[int] | None:
    """The entries of the table at ``addr`` (PAE's PDPT is 32-byte aligned inside a frame)."""
    q = mem.entries4(addr >> 12) if row.entry_size == 4 else mem.entries8(addr >> 12)
    if q is None:
        return None
    if row.entries == 4:
        off = (addr & 0xFFF) >> 3
        return q[off:off + 4]
    return q


def build(mem: PhysMem, sem: Semantics, root_addr: int, *, keep_nonpresent: bool = False,
          max_tables: int = DEFAULT_MAX_TABLES) -> Tree:
    """Read the table DAG under ``root_addr``. ``keep_nonpresent`` keeps non-zero P=0 entries (Linux
    shows them); at most ``max_tables`` distinct (table, level) pairs are read."""
    rows = sem.rows
    last = len(rows) - 1
    memo: dict[tuple[int, int], Node | None] = {}
    tree = Tree(sem, root_addr, None)

    def node_at(addr: int, depth: int) -> Node | int | None:
        key = (addr, depth)
        if key in memo:
            return memo[key]
        if tree.tables >= max_tables:
            tree.capped = True
            return SKIPPED
        row = rows[depth]
        q = read_table(mem, row, addr)
        if q is None:
            memo[key] = None
            return None
        tree.tables += 1
        items: list[Item] = []
        count = 0
        leafsel, taddr, trsvd, lrsvd = row.leafsel, row.taddr, row.trsvd, row.lrsvd
        # Most entries of a real table are zero: ``compress`` skips them in C (a Debian guest's 109 tables
        # hold 9k non-zero entries among 56k).
        for idx, e in zip(compress(range(len(q)), q), compress(q, q), strict=True):
            if not e & 1:
                if keep_nonpresent:
                    items.append((idx, NONPRESENT, e, None))
            elif e & leafsel:
                if e & lrsvd:
                    items.append((idx, BAD, e, None))
                else:
                    items.append((idx, LEAF, e, None))
                    count += 1
            elif depth == last or e & trsvd:
                items.append((idx, BAD, e, None))
            else:
                child = node_at(e & taddr, depth + 1)
                if child is None:
                    items.append((idx, HOLE, e, None))
                elif isinstance(child, int):
                    items.append((idx, SKIPPED, e, None))
                else:
                    items.append((idx, TABLE, e, child))
                    count += child.leaves
        node = Node(addr, depth, items, count)
        memo[key] = node
        return node

    root = node_at(root_addr, 0)
    tree.root = root if isinstance(root, Node) else None
    return tree


# A leaf as ``expand`` lists it: (VA, entry, depth, acc, xd) where acc is the AND of the entries from
# the top down to the leaf (bits 2:0 — P, RW, US — are meaningful) and xd their OR (bit 63: XD).
Leaf = tuple[int, int, int, int, int]


def add_note(notes: list[Note], kind: str, va: int, span: int, detail: str, leaves: int = 0) -> None:
    """Append a note, extending the previous one when it continues it (e.g. 511 repeats in a row)."""
    prev = notes[-1] if notes else None
    if prev is not None and prev.kind == kind and prev.end == va and prev.detail == detail:
        notes[-1] = Note(kind, prev.start, va + span, detail, prev.leaves + leaves)
    else:
        notes.append(Note(kind, va, va + span, detail, leaves))


def item_note(notes: list[Note], row: Row, kind: int, e: int, va: int) -> None:
    """The note for an entry that is neither a leaf nor a readable table."""
    name = row.level.entry_name
    if kind == BAD:
        detail = f"{name} {e:#x} has reserved bits set (any access faults)"
    elif kind == HOLE:
        detail = f"{name} {e:#x} points at table {e & row.taddr:#x}, which is not in the image"
    else:
        detail = f"{name} {e:#x}: table limit reached, not walked"
    add_note(notes, KIND_NAMES[kind], va, row.span, detail)


def whole_space(tree: Tree) -> int:
    """End of the address space the top table covers (2**64 for IA-32e: the upper half is sign-extended)."""
    r = tree.sem.rows[0]
    return 1 << 64 if tree.sem.mode.is_ia32e else r.span * r.entries


def root_note(tree: Tree) -> None:
    add_note(tree.notes, KIND_NAMES[HOLE], 0, whole_space(tree),
             f"top-level table {tree.root_addr:#x} is not in the image")


def expand(tree: Tree, *, max_leaves: int = DEFAULT_MAX_LEAVES) -> list[Leaf]:
    """Every present leaf in VA order (see the module docstring for the bounds); notes go to
    ``tree.notes``."""
    sem = tree.sem
    rows = sem.rows
    out: list[Leaf] = []
    emit = out.append
    notes = tree.notes
    notes.clear()
    if tree.root is None:
        root_note(tree)
        return out
    collapse = tree.leaves > max_leaves
    seen: set[int] = set()
    budget = max_leaves
    canon_high, half = sem.canon_high, (rows[0].span * rows[0].entries) >> 1
    # Without collapsing, a table holding only leaves is listed once per (node, rights) and replayed.
    cache: dict[tuple[int, int, int], list[Leaf]] = {}

    def walk(node: Node, base: int, acc: int, xd: int) -> None:
        nonlocal budget
        depth = node.depth
        row = rows[depth]
        shift, rights = row.shift, row.rights
        top = depth == 0
        for idx, kind, e, child in node.items:
            va = base + (idx << shift)
            if top and canon_high and va >= half:
                va |= canon_high
            if kind == LEAF:
                if collapse:
                    if budget <= 0:
                        add_note(notes, BUDGET, va, row.span, "leaf budget exhausted", 1)
                        continue
                    budget -= 1
                emit((va, e, depth, acc & e, xd | e) if rights else (va, e, depth, acc, xd))
            elif kind == TABLE:
                assert child is not None
                cacc, cxd = (acc & e, xd | e) if rights else (acc, xd)
                if collapse:
                    if id(child) in seen:
                        add_note(notes, COLLAPSED, va, row.span, f"repeats table {child.table:#x} as "
                                 f"{rows[child.depth].level.name} ({child.leaves} leaves each)", child.leaves)
                        continue
                    if child.leaves > budget and rows[child.depth].leafsel == 1:
                        add_note(notes, BUDGET, va, row.span, "leaf budget exhausted", child.leaves)
                        continue
                    seen.add(id(child))
                    walk(child, va, cacc, cxd)
                elif rows[child.depth].leafsel == 1:
                    key = (id(child), cacc & 7, cxd >> 63)
                    block = cache.get(key)
                    if block is None:
                        if any(k > NONPRESENT for _i, k, _e, _c in child.items):
                            walk(child, va, cacc, cxd)  # it holds notes too: take the slow path
                            continue
                        block = cache[key] = _leaf_block(child, rows[child.depth], cacc, cxd)
                    out.extend([(va + r, ce, cd, ca, cx) for r, ce, cd, ca, cx in block])
                else:
                    walk(child, va, cacc, cxd)
            elif kind != NONPRESENT:
                item_note(notes, row, kind, e, va)

    walk(tree.root, 0, -1, 0)
    return out


def _leaf_block(node: Node, row: Row, acc: int, xd: int) -> list[Leaf]:
    """The leaves of a last-level table, relative to its base (non-leaf items left out)."""
    shift, depth = row.shift, node.depth
    if row.rights:
        return [(idx << shift, e, depth, acc & e, xd | e) for idx, kind, e, _c in node.items if kind == LEAF]
    return [(idx << shift, e, depth, acc, xd) for idx, kind, e, _c in node.items if kind == LEAF]
