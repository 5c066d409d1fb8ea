"""``earlymm diff``'s output: the changed mappings as runs and the changed table pages, in text or JSON.

Text, one line per run, like a unified diff: ``+`` added, ``-`` removed, ``~`` changed, with
``old → new`` as physical start, page size and rights (``SW-``: supervisor, writable, no-exec) plus the
attribute bits that differ; then one line per table page, and for a changed page its differing entries.
"""

from __future__ import annotations

from typing import Any

from earlymm.arch.entry import Entry
from earlymm.arch.modes import Level, PagingMode
from earlymm.tools.diff.compare import Change, Diff, Side, TableChange
from earlymm.tools.ptdump.render import note_text
from earlymm.tools.symbols.kaslr import Symbolizer
from earlymm.tools.translate import PAGE_NAMES

MAX_ENTRIES_SHOWN = 8
LEAF_LEVEL = {1 << 12: Level.PT, 1 << 21: Level.PD, 1 << 22: Level.PD, 1 << 30: Level.PDPT}


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and not n & ((1 << shift) - 1):
            return f"{n >> shift}{unit}"
    return f"{n:#x}"


def rights(s: Side) -> str:
    return f"{'U' if s.user else 'S'}{'W' if s.write else 'R'}{'-' if s.nx else 'X'}"


def flag_names(s: Side, mode: PagingMode) -> list[str]:
    level = LEAF_LEVEL.get(s.page_size, Level.PT)
    return Entry(s.flags, level, mode if mode is not PagingMode.DISABLED else PagingMode.LONG4).flag_names(leaf=True)


def side_text(s: Side, mode: PagingMode, other: Side | None) -> str:
    text = f"pa {s.pa:#x} {PAGE_NAMES.get(s.page_size, hex(s.page_size))} {rights(s)}"
    if other is not None and other.flags != s.flags:
        text += " [" + " ".join(flag_names(s, mode)) + "]"
    return text


def _label(sym: Symbolizer | None, va: int) -> str:
    name = sym.va_label(va) if sym is not None else None
    return f" <{name}>" if name else ""


def _table_label(sym: Symbolizer | None, pa: int) -> str:
    name = sym.pa_label(pa) if sym is not None else None
    return f" <{name}>" if name else ""


def change_line(c: Change, mode: PagingMode, sym: Symbolizer | None) -> str:
    mark = {"added": "+", "removed": "-", "changed": "~"}[c.kind]
    head = f"{mark} 0x{c.start:016x}-0x{c.end:016x} {_size(c.end - c.start):>6}{_label(sym, c.start)}  "
    old = side_text(c.old, mode, c.new) if c.old is not None else "(unmapped)"
    new = side_text(c.new, mode, c.old) if c.new is not None else "(unmapped)"
    return head + f"{old} → {new}"


def levels(names: tuple[str, ...]) -> str:
    return "/".join(names) if names else "-"


def table_lines(t: TableChange, sym: Symbolizer | None) -> list[str]:
    mark = {"added": "+", "removed": "-", "changed": "~"}[t.kind]
    lv = levels(t.old_levels or t.new_levels) if t.old_levels == t.new_levels or t.kind != "changed" else \
        f"{levels(t.old_levels)} → {levels(t.new_levels)}"
    line = f"{mark} table {t.table:#x}{_table_label(sym, t.table)} ({lv})"
    if t.kind != "changed":
        return [line]
    out = [line + f": {len(t.entries)} entr{'y' if len(t.entries) == 1 else 'ies'} changed"]
    out += [f"    [{i:3d}] {o:#018x} → {n:#018x}" for i, o, n in t.entries[:MAX_ENTRIES_SHOWN]]
    if len(t.entries) > MAX_ENTRIES_SHOWN:
        out.append(f"    … {len(t.entries) - MAX_ENTRIES_SHOWN} more (see --json)")
    return out


def _count(items: list[Any], kinds: tuple[str, ...] = ("added", "removed", "changed")) -> str:
    return ", ".join(f"{sum(1 for x in items if x.kind == k)} {k}" for k in kinds)


def text(a_label: str, b_label: str, d: Diff, mode: PagingMode, sym: Symbolizer | None) -> str:
    lines = [f"--- A: {a_label}", f"+++ B: {b_label}", f"mappings: {_count(d.mappings)}"]
    lines += [change_line(c, mode, sym) for c in d.mappings]
    lines.append(f"table pages: {_count(d.tables)}")
    for t in d.tables:
        lines += table_lines(t, sym)
    return "\n".join(lines) + "\n"


def notes(d: Diff) -> list[str]:
    return [note_text(n, "A: ") for n in d.notes_a] + [note_text(n, "B: ") for n in d.notes_b]


def _side_json(s: Side | None, mode: PagingMode) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"pa": f"{s.pa:#x}", "page_size": f"{s.page_size:#x}", "flags": f"{s.flags:#x}",
            "flag_names": flag_names(s, mode), "user": s.user, "write": s.write, "nx": s.nx}


def to_json(a: dict[str, Any], b: dict[str, Any], d: Diff, mode: PagingMode, sym: Symbolizer | None
            ) -> dict[str, Any]:
    def change(c: Change) -> dict[str, Any]:
        out: dict[str, Any] = {"change": c.kind, "va": f"{c.start:#x}", "end": f"{c.end:#x}",
                               "size": f"{c.end - c.start:#x}"}
        if sym is not None:
            out["va_symbol"] = sym.va_label(c.start)
        return out | {"old": _side_json(c.old, mode), "new": _side_json(c.new, mode)}

    def table(t: TableChange) -> dict[str, Any]:
        out: dict[str, Any] = {"change": t.kind, "table": f"{t.table:#x}"}
        if sym is not None:
            out["table_symbol"] = sym.pa_label(t.table)
        return out | {"old_levels": list(t.old_levels), "new_levels": list(t.new_levels),
                      "entries": [{"index": i, "old": f"{o:#x}", "new": f"{n:#x}"} for i, o, n in t.entries]}

    return {"a": a, "b": b, **({"symbols": sym.describe()} if sym is not None else {}),
            "identical": d.identical, "mappings": [change(c) for c in d.mappings],
            "tables": [table(t) for t in d.tables], "notes": notes(d)}
