"""The page-table DAG of one or many address spaces, encoded compactly for the HTML view.

A table is read once per (address, level) and becomes one node, however many entries point at it
(espfix's 65,536 aliased leaves are 4 + 1 + 1 entries here, not 65,536 rows), so the document grows
with the tables and never with the leaves they replay. Within a node, runs of entries that continue
each other (a direct-map table of 512 consecutive 2 MiB pages) are one *group*: ``[index, count, kind,
entry, target, flags, rights, child]``, entry ``k`` of the group being ``entry + k·stride`` (stride:
the page size for leaves, 0 for repeated non-present values).

Nodes are hash-consed across views: a boot records the tables at many moments, and a table whose bytes
and children did not change since the last view is the same node (``DagStore.view`` compares a
table's bytes with those it saw last). The classification of entries is the ptdump engine's ``arch``
reading (``ptdump.semantics``): what the CPU does, reserved bits included.

Each node carries a summary for the zoomable map: which effective-rights classes its leaves have
relative to it (bit ``c`` for ``c`` = U·4 + W·2 + X·1) and whether it contains faulting, unreadable or
unwalked entries (bits 8–10), plus its leaf count with every alias replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earlymm.arch.entry import Entry
from earlymm.hw.memory import PhysMem
from earlymm.tools.ptdump.engine import BAD, HOLE, LEAF, NONPRESENT, SKIPPED, TABLE, read_table
from earlymm.tools.ptdump.semantics import Row, Semantics

MASK_BAD, MASK_HOLE, MASK_SKIPPED = 1 << 8, 1 << 9, 1 << 10
DEFAULT_MAX_TABLES = 8192  # per view
DEFAULT_MAX_NODES = 80_000  # over the whole document
DEFAULT_MAX_GROUPS = 500_000  # over the whole document: about 25 MB of page, whatever the tables hold

Group = list[Any]  # [idx, count, kind, entry hex, target hex, flags index, rights code, child id]


@dataclass(frozen=True, slots=True)
class _Template:
    """What a table's bytes say, before its children are resolved: groups with child keys."""

    raw: bytes
    groups: list[Group]
    child_keys: list[tuple[int, int] | None]  # per group: the (address, depth) of a table entry's target
    mask: int  # summary of the node's own entries (children not included)
    leaves: int


@dataclass
class ViewResult:
    root: int  # node id, or -1 when the top table is unreadable
    tables: int
    capped: bool


@dataclass
class DagStore:
    """Nodes shared by every view of one document."""

    max_nodes: int = DEFAULT_MAX_NODES
    max_groups: int = DEFAULT_MAX_GROUPS
    groups: int = 0
    nodes: list[list[Any]] = field(default_factory=list)  # [table hex, depth, groups, mask, leaves]
    reads: int = 0  # tables read over all views (a boot's snapshots stop when this passes their budget)
    flag_names: list[list[str]] = field(default_factory=list)
    _flag_index: dict[tuple[int, int, str, bool], int] = field(default_factory=dict)
    _last: dict[tuple[int, int, str], tuple[_Template, list[int], int]] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return len(self.nodes) >= self.max_nodes or self.groups >= self.max_groups

    def view(self, mem: PhysMem, sem: Semantics, root_addr: int, *, max_tables: int = DEFAULT_MAX_TABLES
             ) -> ViewResult:
        """Read the tables under ``root_addr`` (without changing memory) and return the root's node id."""
        memo: dict[tuple[int, int], int] = {}  # (address, depth) -> node id, or -HOLE / -SKIPPED
        result = ViewResult(-1, 0, False)

        def resolve(addr: int, depth: int) -> int:
            key = (addr, depth)
            got = memo.get(key)
            if got is not None:
                return got
            if result.tables >= max_tables or self.full:
                result.capped = True
                return -SKIPPED
            row = sem.rows[depth]
            q = read_table(mem, row, addr)
            if q is None:
                memo[key] = -HOLE
                return -HOLE
            result.tables += 1
            self.reads += 1
            raw = bytes(q)
            cache_key = (addr, depth, sem.mode.value)
            last = self._last.get(cache_key)
            tpl = last[0] if last is not None and last[0].raw == raw else self._template(sem, depth, raw)
            kids = [resolve(*k) if k is not None else 0 for k in tpl.child_keys]
            if last is not None and last[0] is tpl and last[1] == kids:
                node_id = last[2]
            else:
                node_id = self._add(addr, depth, tpl, kids)
                self._last[cache_key] = (tpl, kids, node_id)
            memo[key] = node_id
            return node_id

        root = resolve(root_addr, 0)
        result.root = root if root >= 0 else -1
        return result

    def _add(self, addr: int, depth: int, tpl: _Template, kids: list[int]) -> int:
        mask, leaves = tpl.mask, tpl.leaves
        groups: list[Group] = []
        for g, key, kid in zip(tpl.groups, tpl.child_keys, kids, strict=True):
            if key is None:
                groups.append(g)
                continue
            g = list(g)
            if kid >= 0:
                g[7] = kid
                child = self.nodes[kid]
                code = g[6]
                for c in range(8):
                    if child[3] >> c & 1:
                        mask |= 1 << (c & code)
                mask |= child[3] & (MASK_BAD | MASK_HOLE | MASK_SKIPPED)
                leaves += child[4]
            else:
                g[2] = -kid  # HOLE or SKIPPED
                mask |= MASK_HOLE if -kid == HOLE else MASK_SKIPPED
            groups.append(g)
        self.nodes.append([f"{addr:x}", depth, groups, mask, leaves])
        self.groups += len(groups)
        return len(self.nodes) - 1

    def _flags(self, sem: Semantics, row: Row, e: int, leaf: bool) -> int:
        bits = e & sem.flag_bits(row) if leaf else e & ~row.taddr & ((1 << (8 * row.entry_size)) - 1)
        key = (bits, int(row.level), sem.mode.value, leaf)
        i = self._flag_index.get(key)
        if i is None:
            i = self._flag_index[key] = len(self.flag_names)
            self.flag_names.append(Entry(bits, row.level, sem.mode).flag_names(leaf=leaf))
        return i

    def _template(self, sem: Semantics, depth: int, raw: bytes) -> _Template:
        row = sem.rows[depth]
        last = depth == len(sem.rows) - 1
        arr = np.frombuffer(raw, dtype="<u8" if row.entry_size == 8 else "<u4").astype(np.uint64)
        idx = np.flatnonzero(arr)
        vals = arr[idx]
        present = (vals & np.uint64(1)) != 0
        leafsel = (vals & np.uint64(row.leafsel)) != 0 if row.leafsel else np.zeros(len(vals), bool)
        kinds = np.full(len(vals), NONPRESENT, dtype=np.int64)
        is_leaf = present & leafsel
        kinds[is_leaf] = np.where((vals[is_leaf] & np.uint64(row.lrsvd)) != 0, BAD, LEAF)
        is_table = present & ~leafsel
        bad_table = np.uint64(row.trsvd)
        kinds[is_table] = BAD if last else np.where((vals[is_table] & bad_table) != 0, BAD, TABLE)
        # A group continues while the index, the kind and the value advance together.
        stride = np.where(kinds == LEAF, np.uint64(row.lsize), np.uint64(0))
        cont = np.zeros(len(vals), bool)
        if len(vals) > 1:
            cont[1:] = ((idx[1:] == idx[:-1] + 1) & (kinds[1:] == kinds[:-1]) & np.isin(kinds[1:], (LEAF, NONPRESENT))
                        & (vals[1:] - vals[:-1] == stride[1:]))
        starts = np.flatnonzero(~cont)
        ends = [*starts[1:].tolist(), len(vals)] if len(starts) else []
        groups: list[Group] = []
        child_keys: list[tuple[int, int] | None] = []
        mask = leaves = 0
        for s, end in zip(starts.tolist(), ends, strict=True):
            e, kind, n = int(vals[s]), int(kinds[s]), end - s
            code = _rights(sem, row, e)
            if kind == LEAF:
                target, fl = sem.leaf_pa(row, e), self._flags(sem, row, e, True)
                mask |= 1 << code
                leaves += n
            elif kind == TABLE:
                target, fl = e & row.taddr, self._flags(sem, row, e, False)
            else:
                target, fl = 0, self._flags(sem, row, e, bool(e & row.leafsel) or last)
                if kind == BAD:
                    mask |= MASK_BAD
            groups.append([int(idx[s]), n, kind, f"{e:x}", f"{target:x}", fl, code, -1])
            child_keys.append((target, depth + 1) if kind == TABLE else None)
        return _Template(raw, groups, child_keys, mask, leaves)


def _rights(sem: Semantics, row: Row, e: int) -> int:
    """U·4 + W·2 + X·1 of one entry (7 for a level that carries no rights: PAE's PDPTEs)."""
    if not row.rights:
        return 7
    return (4 if e & 4 else 0) | (2 if e & 2 else 0) | (0 if sem.nxe and e >> 63 else 1)


def level_info(sem: Semantics) -> dict[str, Any]:
    """What the page needs to place entries: per level its name, shift, entry count and page size."""
    return {"mode": sem.mode.value, "va_bits": sem.va_bits, "ia32e": sem.mode.is_ia32e,
            "levels": [{"name": r.level.name, "entry": r.level.entry_name, "shift": r.shift, "entries": r.entries,
                        "lsize": f"{r.lsize:x}"} for r in sem.rows]}
