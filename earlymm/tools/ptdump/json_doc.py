"""``ptdump --format json``: runs rendered straight from the table DAG, bounded like the text formats.

The runs are exactly ``runs.merge(sem, engine.expand(tree))`` (``runs.space_json`` is that reference
form), but producing them leaf by leaf costs a Python object per leaf: a small 32-bit table that maps
itself 1024 times is a million leaves, 20 s and 1.5 GB that way. Here a last-level table's leaves are
merged into runs once per (table, inherited rights) — the same cache ``expand`` keeps — each run is
rendered once as the JSON text after its ``"va"``, and every use of the table only formats the VA
(runs join across tables exactly as ``merge`` joins them). Past ``max_leaves`` leaves the tree is
expanded with collapsing instead, as for the other formats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from earlymm.arch.entry import Entry
from earlymm.tools.ptdump.engine import LEAF, NONPRESENT, TABLE, Node, Tree, expand, item_note
from earlymm.tools.ptdump.runs import LeafRun, effective, merge, note_json
from earlymm.tools.ptdump.semantics import Semantics

# (relative va, run, JSON text after the va) for each run of a last-level table
Block = list[tuple[int, LeafRun, str]]
INDENT = "    "


@dataclass
class SpaceDoc:
    head: dict[str, Any]  # cr3, mode, top_table, tables_read, leaves
    run_lines: list[str]  # '    {"va": …}' per run, or several runs joined by ',\n' (one chunk per table use)
    notes: list[dict[str, Any]]


class _Renderer:
    def __init__(self, sem: Semantics) -> None:
        self.sem = sem
        self.names: dict[tuple[int, int], str] = {}
        self.lines: list[str] = []
        self.pending: LeafRun | None = None

    def rest(self, r: LeafRun) -> str:
        """The run's JSON object text after ``{"va": "…", `` — everything but the VA is fixed."""
        key = (r.flags, r.depth)
        names = self.names.get(key)
        if names is None:
            row = self.sem.rows[r.depth]
            names = self.names[key] = json.dumps(Entry(r.flags, row.level, self.sem.mode).flag_names(leaf=True))
        return (f'"pa": "{r.pa:#x}", "size": "{r.size:#x}", "page_size": "{r.page_size:#x}", "level": '
                f'"{self.sem.rows[r.depth].level.entry_name}", "leaves": {r.count}, "flags": "{r.flags:#x}", '
                f'"flag_names": {names}, "user": {_b(r.user)}, "write": {_b(r.write)}, "nx": {_b(r.nx)}}}')

    def line(self, va: int, rest: str) -> str:
        return f'{INDENT}{{"va": "{va:#x}", {rest}'

    def push(self, r: LeafRun) -> None:
        """Append a run, joined to the pending one when ``merge`` would join them."""
        p = self.pending
        if (p is not None and p.depth == r.depth and p.end == r.va and p.pa + p.size == r.pa
                and p.flags == r.flags and (p.user, p.write, p.nx) == (r.user, r.write, r.nx)):
            self.pending = LeafRun(p.va, p.pa, p.size + r.size, p.page_size, p.depth, p.flags, p.user, p.write,
                                   p.nx, p.count + r.count)
            return
        self.flush()
        self.pending = r

    def flush(self) -> None:
        if self.pending is not None:
            self.lines.append(self.line(self.pending.va, self.rest(self.pending)))
            self.pending = None

    def block(self, base: int, block: Block) -> None:
        """A cached table's runs at ``base``: the first may join the pending run, the last stays pending."""
        rva, r, _rest = block[0]
        self.push(_moved(r, base + rva))
        if len(block) == 1:
            return
        self.flush()
        if len(block) > 2:  # one string per use: a million aliased runs are a thousand list items
            self.lines.append(",\n".join([f'{INDENT}{{"va": "{base + v:#x}", {rest}' for v, _r, rest in block[1:-1]]))
        rva, r, _rest = block[-1]
        self.pending = _moved(r, base + rva)


def _b(v: bool) -> str:
    return "true" if v else "false"


def _moved(r: LeafRun, va: int) -> LeafRun:
    return LeafRun(va, r.pa, r.size, r.page_size, r.depth, r.flags, r.user, r.write, r.nx, r.count)


def run_lines(tree: Tree, max_leaves: int) -> list[str]:
    """Every run's JSON text, in VA order; notes (unreadable, collapsed…) go to ``tree.notes``."""
    sem = tree.sem
    out = _Renderer(sem)
    if tree.root is None or tree.leaves > max_leaves:
        for r in merge(sem, expand(tree, max_leaves=max_leaves)):
            out.push(r)
        out.flush()
        return out.lines
    rows, notes = sem.rows, tree.notes
    notes.clear()
    canon_high, half = sem.canon_high, (rows[0].span * rows[0].entries) >> 1
    cache: dict[tuple[int, int, int], Block] = {}
    plain: dict[int, bool] = {}  # per last-level node: only leaves and non-present entries

    def leaf_run(va: int, e: int, depth: int, acc: int, xd: int) -> LeafRun:
        row = rows[depth]
        user, write, nx = effective(sem, acc, xd)
        return LeafRun(va, sem.leaf_pa(row, e), row.lsize, row.lsize, depth, e & sem.flag_bits(row), user, write,
                       nx, 1)

    def block_of(node: Node, acc: int, xd: int) -> Block:
        rights = rows[node.depth].rights
        leaves = [(idx << rows[node.depth].shift, e, node.depth, acc & e if rights else acc, xd | e if rights else xd)
                  for idx, kind, e, _c in node.items if kind == LEAF]
        return [(r.va, r, out.rest(r)) for r in merge(sem, leaves)]

    def walk(node: Node, base: int, acc: int, xd: int) -> None:
        depth = node.depth
        row = rows[depth]
        for idx, kind, e, child in node.items:
            va = base + (idx << row.shift)
            if depth == 0 and canon_high and va >= half:
                va |= canon_high
            cacc, cxd = (acc & e, xd | e) if row.rights else (acc, xd)
            if kind == LEAF:
                out.push(leaf_run(va, e, depth, cacc, cxd))
            elif kind == TABLE:
                assert child is not None
                simple = plain.get(id(child))
                if simple is None:
                    simple = plain[id(child)] = rows[child.depth].leafsel == 1 and not any(
                        k > NONPRESENT for _i, k, _e, _c in child.items)
                if simple:
                    key = (id(child), cacc & 7, cxd >> 63)
                    blk = cache.get(key)
                    if blk is None:
                        blk = cache[key] = block_of(child, cacc, cxd)
                    if blk:
                        out.block(va, blk)
                else:
                    walk(child, va, cacc, cxd)
            elif kind != NONPRESENT:
                item_note(notes, row, kind, e, va)

    walk(tree.root, 0, -1, 0)
    out.flush()
    return out.lines


def space_doc(tree: Tree, cr3: int, max_leaves: int) -> SpaceDoc:
    lines = run_lines(tree, max_leaves)
    head = {"cr3": f"{cr3:#x}", "mode": tree.sem.mode.value, "top_table": f"{tree.root_addr:#x}",
            "tables_read": tree.tables, "leaves": tree.leaves}
    return SpaceDoc(head, lines, [note_json(n) for n in tree.notes])


def json_text(image: str, docs: list[SpaceDoc]) -> list[str]:
    """``{"image": …, "address_spaces": [...]}`` with one run or note per line, as parts to write in order
    (joining them would copy the whole document once more)."""
    out = ["{\"image\": ", json.dumps(image), ",\n \"address_spaces\": ["]
    for i, doc in enumerate(docs):
        out.append(("," if i else "") + "\n  {" + json.dumps(doc.head)[1:-1])
        for key, items in (("runs", doc.run_lines), ("notes", [INDENT + json.dumps(n) for n in doc.notes])):
            out.append(f",\n   \"{key}\": [")
            for j, item in enumerate(items):
                out += (",\n" if j else "\n", item)
            out.append("\n   ]" if items else "]")
        out.append("}")
    out.append("\n ]\n}\n")
    return out
