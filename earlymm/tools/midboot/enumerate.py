"""Present leaves and table links of an address space, as the CPU reads them, from the ptdump engine.

A *leaf* is a present entry that maps memory: VA, PA, page size and its attribute bits. A *link* is a
present entry that points at a lower table: the level of the entry, the VA range it covers, its attribute
bits (what the CPU ANDs/ORs into the rights of every leaf below) and the table it points at. Both come
from one ``earlymm.tools.ptdump.engine`` DAG read with the CPU's semantics (``arch``); links are listed
by replaying that DAG at its VA offsets, with a cap, since a self-referencing table makes the number of
paths explode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earlymm.arch.modes import Features
from earlymm.hw.memory import FrameSource
from earlymm.tools.ptdump.engine import TABLE, Node, Note, Tree, expand
from earlymm.tools.ptdump.space import Space, open_space

MAX_LINKS = 1 << 18


@dataclass(frozen=True, slots=True)
class Leaf:
    va: int
    pa: int
    size: int
    flags: int  # every bit of the entry outside its address field (P, RW, US, PWT, PCD, A, D, PS/PAT, G, NX…)


@dataclass(frozen=True, slots=True)
class Link:
    level: str  # the entry's level in SDM terms: PML5E, PML4E, PDPTE, PDE
    va: int
    span: int
    flags: int
    table: int  # physical address of the table it points at


@dataclass
class Enumeration:
    root: int
    leaves: list[Leaf]
    links: list[Link]
    tables: set[int]
    notes: list[Note] = field(default_factory=list)  # unreadable tables, reserved bits, caps

    def leaf_map(self) -> dict[int, Leaf]:
        return {lf.va: lf for lf in self.leaves}


def enumerate_tree(tree: Tree) -> Enumeration:
    sem = tree.sem
    leaves = [Leaf(va, sem.leaf_pa(sem.rows[d], e), sem.rows[d].lsize, e & sem.flag_bits(sem.rows[d]))
              for va, e, d, _acc, _xd in expand(tree)]
    links: list[Link] = []
    tables: set[int] = set()
    notes = list(tree.notes)
    canon, half = sem.canon_high, (sem.rows[0].span * sem.rows[0].entries) >> 1

    def walk(node: Node, base: int) -> None:
        tables.add(node.table)
        row = sem.rows[node.depth]
        for idx, kind, e, child in node.items:
            va = base + (idx << row.shift)
            if node.depth == 0 and canon and va >= half:
                va |= canon
            if kind == TABLE and child is not None:
                if len(links) >= MAX_LINKS:
                    notes.append(Note("link-cap", va, va + row.span, f"more than {MAX_LINKS} links: not listed"))
                    return
                links.append(Link(row.level.entry_name, va, row.span, e & ~row.taddr, child.table))
                walk(child, va)

    if tree.root is not None:
        walk(tree.root, 0)
    return Enumeration(tree.root_addr, leaves, links, tables, notes)


def enumerate_space(source: FrameSource, regs: tuple[int, int, int, int], features: Features, *,
                    root: int | None = None, absent_zero: bool = False) -> Enumeration:
    """Leaves and links of the space ``regs`` = (cr0, cr3, cr4, efer) selects over ``source``; ``root``
    walks another top-level table (e.g. ``early_top_pgt`` while CR3 holds ``init_top_pgt``) in the same
    paging mode. Raises ``SetupError`` for registers the CPU would refuse."""
    space: Space = open_space(source, regs, features, absent_zero=absent_zero)
    if root is not None:
        space = space.with_cr3(root)
    return enumerate_tree(space.tree("arch"))


def qemu_tlb_lines(leaves: list[Leaf]) -> list[str]:
    """The leaves as QEMU 7.2's ``info tlb`` prints them (target/i386/monitor.c print_pte): VA, the entry's
    address bits, then ``XGPDACTUW`` from the leaf entry only, bit 7 of a 4 KiB PTE (PAT) not shown."""
    out = []
    shown: dict[tuple[int, bool], str] = {}  # a few distinct flag sets cover a whole address space
    for lf in leaves:
        key = (lf.flags, lf.size == 4096)
        bits = shown.get(key)
        if bits is None:
            bits = shown[key] = "".join(
                c if lf.flags >> b & 1 and not (b == 7 and lf.size == 4096) else "-"
                for b, c in ((63, "X"), (8, "G"), (7, "P"), (6, "D"), (5, "A"), (4, "C"), (3, "T"), (2, "U"), (1, "W")))
        out.append(f"{lf.va:016x}: {lf.pa:016x} {bits}")
    return out


FLAG_NAMES = ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"), (7, "PS"), (8, "G"),
              (9, "AVL9"), (10, "AVL10"), (11, "AVL11"), (63, "NX"))


def flag_text(flags: int, size: int = 0) -> str:
    """Linux's names for the bits set: ``P RW A D PS G NX``; bit 7 of a 4 KiB PTE is PAT, bit 12 of a large
    page's entry is its PAT bit, other high bits are printed as ``bit N``."""
    names = []
    for bit, name in FLAG_NAMES:
        if flags >> bit & 1:
            names.append("PAT" if bit == 7 and size == 4096 else name)
    known = sum(1 << b for b, _ in FLAG_NAMES)
    for bit in range(12, 63):
        if flags >> bit & 1 and not known >> bit & 1:
            names.append("PAT" if bit == 12 and size > 4096 else f"bit{bit}")
    return " ".join(names) or "-"
