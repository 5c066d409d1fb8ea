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
_MARKS = "\0\1\2\3"  # stand-ins in a last-level table's template for its VAs' digits above bit 20


def flag_letters(entry: int) -> str:
    return FLAGS[((entry >> 1) & 0xFF) | ((entry >> 63) << 8)]


def tlb_text(tree: Tree, crlf: bool = False, max_leaves: int = DEFAULT_MAX_LEAVES) -> str:
    """``info tlb`` for ``tree`` (QEMU reading); notes on what could not be listed go to ``tree.notes``."""
    if tree.root is None or tree.leaves > max_leaves:
        return info_tlb(tree.sem, expand(tree, max_leaves=max_leaves), crlf)
    return _tlb_fast(tree, tree.root, "\r\n" if crlf else "\n")


def _tlb_fast(tree: Tree, root: Node, nl: str) -> str:
    # QEMU prints ~74k lines for a small Linux guest, 65,536 of them for espfix's aliased tables. Each
    # last-level table is formatted once, as a template, and replayed at each of its bases with
    # ``str.replace`` (C loops over the text, nothing per line). A last-level table covers 2^21 or 2^22
    # bytes from an aligned base, so a line's VA is the base's bits above 20 OR-ed with the entry's
    # offset: the template holds the offset's low 20 bits as five hex digits, and a mark naming the
    # offset's bits above 20 stands where the eleven digits of ``(base >> 20) | mark`` go.
    sem, rows, notes = tree.sem, tree.sem.rows, tree.notes
    notes.clear()
    per = [(r.laddr, ~0x80 if r.leafsel == 1 else -1) for r in rows]
    parts: list[str] = []
    templates: dict[int, tuple[str, int]] = {}  # id(node) -> (template, number of marks)
    canon_high, half = sem.canon_high, (rows[0].span * rows[0].entries) >> 1
    flags = FLAGS

    def tail(e: int, depth: int) -> str:
        laddr, keep = per[depth]
        e &= keep
        return f": {e & laddr:016x} {flags[((e >> 1) & 0xFF) | ((e >> 63) << 8)]}{nl}"

    def template(node: Node, marks: int) -> str:
        shift, depth = rows[node.depth].shift, node.depth
        assert marks <= len(_MARKS)
        return "".join(f"{_MARKS[(i << shift) >> 20]}{(i << shift) & 0xFFFFF:05x}{tail(e, depth)}"
                       for i, k, e, _c in node.items if k == LEAF)

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
                known = templates.get(id(child))
                if known is None:
                    if rows[child.depth].leafsel != 1 or any(k > NONPRESENT for _i, k, _e, _c in child.items):
                        walk(child, va)
                        continue
                    marks = 1 << (shift - 20)  # the child covers 1 << shift bytes from va
                    known = templates[id(child)] = (template(child, marks), marks)
                text, marks = known
                hi = va >> 20
                for m in range(marks):
                    text = text.replace(_MARKS[m], f"{hi | m:011x}")
                parts.append(text)
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
