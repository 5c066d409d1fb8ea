"""QEMU 7.2's ``info tlb`` and ``info mem`` (target/i386/monitor.c), reproduced byte for byte.

Both walk the tables with QEMU's own reading (``semantics.tool_semantics("qemu", …)``).

* ``info tlb`` — one line per present leaf: ``%016x: %016x XGPDACTUW`` (VA sign-extended, the leaf
  masked with ``print_pte``'s per-size mask, then the leaf's own NX/G/PS/D/A/PCD/PWT/U/W; a 4 KiB
  PTE has bit 7 (PAT) cleared before printing).
* ``info mem`` — runs of equal effective U/RW/P (AND over the levels walked; NX ignored), each printed
  as ``%016x-%016x %016x urw`` when the protection changes. QEMU computes run ends on the raw,
  un-sign-extended VA and sign-extends start, end *and size* when printing; that is kept. For 5-level
  paging QEMU 7.2's ``mem_info_la57`` tests "present" the wrong way round and prints nothing; this
  prints what its algorithm gives with the test the right way round (the 4-level walk with a fifth
  level, as in the fix posted upstream).
"""

from __future__ import annotations

from earlymm.tools.ptdump.engine import (
    DEFAULT_MAX_LEAVES,
    LEAF,
    NONPRESENT,
    TABLE,
    Leaf,
    Node,
    Tree,
    expand,
    item_note,
)
from earlymm.tools.ptdump.semantics import Semantics

_LETTERS = ((1 << 63, "X"), (1 << 8, "G"), (1 << 7, "P"), (1 << 6, "D"), (1 << 5, "A"), (1 << 4, "C"),
            (1 << 3, "T"), (1 << 2, "U"), (1 << 1, "W"))


def _flag_table() -> tuple[str, ...]:
    # Indexed by bits 8:1 of the entry plus NX as bit 8 of the index: 512 precomputed strings.
    out = []
    for i in range(512):
        e = ((i & 0xFF) << 1) | ((i >> 8) << 63)
        out.append("".join(ch if e & bit else "-" for bit, ch in _LETTERS))
    return tuple(out)


FLAGS = _flag_table()


def flag_letters(entry: int) -> str:
    return FLAGS[((entry >> 1) & 0xFF) | ((entry >> 63) << 8)]


def tlb_text(tree: Tree, crlf: bool = False, max_leaves: int = DEFAULT_MAX_LEAVES) -> str:
    """``info tlb`` for ``tree`` (QEMU reading); notes on what could not be listed go to ``tree.notes``."""
    if tree.root is None or tree.leaves > max_leaves:
        return info_tlb(tree.sem, expand(tree, max_leaves=max_leaves), crlf)
    return _tlb_fast(tree, tree.root, "\r\n" if crlf else "\n")


def _tlb_fast(tree: Tree, root: Node, nl: str) -> str:
    # QEMU prints ~74k lines for a small Linux guest, 65,536 of them for espfix's aliased tables. Each
    # last-level table is formatted once and replayed at each of its bases with ``str.join`` (a C loop,
    # nothing per line). A last-level table covers 2^21 or 2^22 bytes from an aligned base, so a line's
    # VA is the base's bits above 20 OR-ed with the entry's offset: the table's lines are kept without
    # the VA's top eleven hex digits, grouped by the offset's bits above 20 (``hi``), and a replay
    # joins each group with the digits of ``(base >> 20) | hi``.
    sem, rows, notes = tree.sem, tree.sem.rows, tree.notes
    notes.clear()
    per = [(r.laddr, ~0x80 if r.leafsel == 1 else -1) for r in rows]
    parts: list[str] = []
    templates: dict[int, list[tuple[int, list[str]]]] = {}  # id(node) -> [(hi, lines without top digits)]
    canon_high, half = sem.canon_high, (rows[0].span * rows[0].entries) >> 1
    flags = FLAGS

    def tail(e: int, depth: int) -> str:
        laddr, keep = per[depth]
        e &= keep
        return f": {e & laddr:016x} {flags[((e >> 1) & 0xFF) | ((e >> 63) << 8)]}{nl}"

    def template(node: Node) -> list[tuple[int, list[str]]]:
        shift, (laddr, keep) = rows[node.depth].shift, per[node.depth]
        groups: dict[int, list[str]] = {}
        for i, k, e, _c in node.items:  # tail() inlined: this runs for every line of every such table
            if k == LEAF:
                off, e = i << shift, e & keep
                groups.setdefault(off >> 20, []).append(
                    f"{off & 0xFFFFF:05x}: {e & laddr:016x} {flags[((e >> 1) & 0xFF) | ((e >> 63) << 8)]}{nl}")
        return list(groups.items())  # in offset order: items are in index order

    def walk(node: Node, base: int) -> None:
        depth = node.depth
        row = rows[depth]
        shift, top = row.shift, depth == 0
        for idx, kind, e, child in node.items:
            va = base + (idx << shift)
            if top and canon_high and va >= half:
                va |= canon_high
            if kind == LEAF:
                parts.append(f"{va:016x}{tail(e, depth)}")
            elif kind == TABLE:
                assert child is not None
                groups = templates.get(id(child))
                if groups is None:
                    if rows[child.depth].leafsel != 1 or any(k > NONPRESENT for _i, k, _e, _c in child.items):
                        walk(child, va)
                        continue
                    groups = templates[id(child)] = template(child)
                top_digits = va >> 20  # va is aligned to the child's span (1 << shift >= 2^21)
                for hi, lines in groups:
                    digits = f"{top_digits | hi:011x}"
                    parts.append(digits)
                    parts.append(digits.join(lines))
            elif kind != NONPRESENT:
                item_note(notes, row, kind, e, va)

    walk(root, 0)
    return "".join(parts)


def info_tlb(sem: Semantics, leaves: list[Leaf], crlf: bool = False) -> str:
    nl = "\r\n" if crlf else "\n"
    flags = FLAGS
    # Per depth: the print mask, and which bits of the entry stay (a PTE loses PS, i.e. PAT).
    per = [(r.laddr, ~0x80 if r.leafsel == 1 else -1) for r in sem.rows]
    lines: list[str] = []
    append = lines.append
    for va, e, depth, _acc, _xd in leaves:
        laddr, keep = per[depth]
        e &= keep
        append(f"{va:016x}: {e & laddr:016x} {flags[((e >> 1) & 0xFF) | ((e >> 63) << 8)]}{nl}")
    return "".join(lines)


def mem_text(tree: Tree, crlf: bool = False, max_leaves: int = DEFAULT_MAX_LEAVES) -> str:
    """``info mem`` for ``tree`` (QEMU reading); notes go to ``tree.notes``."""
    leaves = expand(tree, max_leaves=max_leaves)
    return info_mem(tree.sem, leaves, crlf)


def info_mem(sem: Semantics, leaves: list[Leaf], crlf: bool = False) -> str:
    nl = "\r\n" if crlf else "\n"
    bits = sem.va_bits
    raw = (1 << bits) - 1
    sign = 1 << (bits - 1) if sem.mode.is_ia32e else 1 << 47  # addr_canonical tests bit 47 unless LA57
    high = ((1 << 64) - 1) ^ ((sign << 1) - 1)
    spans = [r.span for r in sem.rows]
    lines: list[str] = []
    start = -1
    last = 0

    def canon(a: int) -> int:
        a &= (1 << 64) - 1
        return a | high if a & sign else a

    def mem_print(end: int, prot: int) -> None:
        nonlocal start, last
        if prot == last:
            return
        if start != -1:
            lines.append(f"{canon(start):016x}-{canon(end):016x} {canon(end - start):016x} "
                         f"{'u' if last & 4 else '-'}r{'w' if last & 2 else '-'}{nl}")
        start = end if prot else -1
        last = prot

    cur_end = -1
    for va, _e, depth, acc, _xd in leaves:
        v = va & raw
        if v != cur_end and cur_end != -1:
            mem_print(cur_end, 0)
        mem_print(v, acc & 7)
        cur_end = v + spans[depth]
    if cur_end != -1:
        mem_print(cur_end, 0)
    mem_print(1 << bits, 0)
    return "".join(lines)
