"""The recorded table writes as text and JSON, restricted by table or by VA range.

JSON keys (one object per run of entries, in store order): ``function``, ``op``, ``phase``, ``table``,
``table_pa`` (machine address under Xen PV, with ``table_pfn``), ``level`` (hardware level 1–5, ``null``
when nothing says), ``level_name``, ``level_how``, ``index``, ``count``, ``va`` ([start, end) the entries map,
``null`` when the table is not reached from a root), ``va_aliases``, ``via`` (the kernel's virtual address
of the store), ``old``/``new`` (the first entry) and ``old_step``/``new_step`` (per entry), ``decoded``
(``old``/``new``: present, flags, addr, leaf), ``points_to`` (the table the new entry points at).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earlymm.arch.addr import parse_int
from earlymm.tools.tablewrites.capture import WriteTracer
from earlymm.tools.tablewrites.decode import Decoded, decode
from earlymm.tools.tablewrites.runs import Run
from earlymm.tools.tablewrites.tables import Table, canonical

# Names a table may be given by (--trace-writes-table), per boot path; "NAME[N]" for the numbered kinds.
STATIC_NAMES = {
    "x86-64": ("early_level4_pgt", "early_top_pgt", "init_level4_pgt", "init_top_pgt", "level4_kernel_pgt",
               "level3_kernel_pgt", "level2_kernel_pgt", "level2_fixmap_pgt", "level1_fixmap_pgt",
               "level1_fixmap_pgt_2", "bm_pte", "early_dynamic_pgts", "brk", "memblock", "loader"),
    "xen-pv": ("init_level4_pgt", "level3_ident_pgt", "level2_ident_pgt", "level3_kernel_pgt", "level2_kernel_pgt",
               "level2_fixmap_pgt", "level1_fixmap_pgt", "level3_user_vsyscall", "brk", "memblock",
               "Xen bootstrap", "mfn"),
    "i386": ("swapper_pg_dir", "pg0", "bootmem"),
}
ALIASES = {"early_top_pgt": "early_level4_pgt", "init_top_pgt": "init_level4_pgt"}


@dataclass(frozen=True)
class Filter:
    table: str | None = None  # a name (or its kind: "early_dynamic_pgts" is every pool page)
    table_pa: int | None = None  # any address in the table's page
    va: tuple[int, int] | None = None  # [start, end)

    def describe(self) -> str:
        parts = []
        if self.table is not None:
            parts.append(f"table {self.table}")
        if self.table_pa is not None:
            parts.append(f"table at {self.table_pa:#x}")
        if self.va is not None:
            parts.append(f"VA {self.va[0]:#x}-{self.va[1]:#x}")
        return ", ".join(parts) or "all"


def parse_filter(table: str | None, va: str | None, arch: str) -> Filter:
    """``--trace-writes-table NAME|PA`` and ``--trace-writes-va START-END``; ValueError with one line."""
    name = pa = rng = None
    if table is not None:
        text = table.strip()
        if text[:1].isdigit():
            pa = parse_int(text, bits=52, what="table address")
        else:
            base = text.split("[", 1)[0].strip()
            known = STATIC_NAMES["i386" if arch.startswith("i386") else arch]
            if base not in known or ("[" in text and not _index_ok(text)):
                raise ValueError(f"--trace-writes-table {table!r}: no such table on this boot path (one of: "
                                 f"{', '.join(known)}; NAME[N] for one page; or a physical address)")
            name = text
    if va is not None:
        start_s, dash, end_s = va.partition("-")
        if not dash:
            raise ValueError(f"--trace-writes-va {va!r}: want START-END (END exclusive)")
        start = parse_int(start_s.strip(), bits=64, what="start")
        end = parse_int(end_s.strip(), bits=65, what="end")
        if not start < end <= 1 << 64:
            raise ValueError(f"--trace-writes-va {va!r}: END must be above START and at most 2^64")
        rng = (start, end)
    return Filter(name, pa, rng)


def _index_ok(text: str) -> bool:
    inner = text.split("[", 1)[1]
    return inner.endswith("]") and inner[:-1].isdigit()


def _name_matches(t: Table, want: str) -> bool:
    want = ALIASES.get(want, want)
    name = ALIASES.get(t.name, t.name)
    return name == want or (("[" not in want) and name.split("[", 1)[0].split(" ")[0] == want) \
        or (want in ("Xen bootstrap", "memblock", "loader", "bootmem", "mfn") and name.startswith(want))


@dataclass(frozen=True)
class View:
    """One run as shown: possibly clipped to the filter's VA range."""

    run: Run
    first: int  # offset of the first shown entry within the run
    count: int


def select(tr: WriteTracer, f: Filter) -> list[View]:
    out: list[View] = []
    for r in tr.runs:
        t = r.table
        if f.table is not None and not _name_matches(t, f.table):
            continue
        if f.table_pa is not None and t.pa >> 12 != f.table_pa >> 12 and (t.pfn is None or t.pfn != f.table_pa >> 12):
            continue
        if f.va is None:
            out.append(View(r, 0, r.count))
            continue
        lo, hi = r.count, 0
        for start, span in _starts(tr, r):
            a = max(0, (f.va[0] - start) // span) if f.va[0] > start else 0
            b = min(r.count, -(-(f.va[1] - start) // span)) if f.va[1] > start else 0
            if a < b:
                lo, hi = min(lo, a), max(hi, b)
        if lo < hi:
            out.append(View(r, lo, hi - lo))
    return out


def _starts(tr: WriteTracer, r: Run) -> list[tuple[int, int]]:
    """(canonical VA of the run's first entry, bytes per entry) for each place its table sits."""
    t = r.table
    if t.level is None:
        return []
    span = t.span()
    return [(canonical(b + r.index * span, top, t.entry_size), span) for b, top in t.bases(tr.bases_memo)]


def check_filter(tr: WriteTracer, f: Filter) -> str | None:
    """Why the filter names nothing this boot had (a table that never existed), or None."""
    if f.table is not None and not any(_name_matches(t, f.table) for t in tr.registry.epochs):
        return f"--trace-writes-table {f.table}: this boot had no such table"
    if f.table_pa is not None and not any(t.pa >> 12 == f.table_pa >> 12 or t.pfn == f.table_pa >> 12
                                          for t in tr.registry.epochs):
        return f"--trace-writes-table {f.table_pa:#x}: no page table of this boot is at that address"
    return None


def level_name(tr: WriteTracer, t: Table) -> str:
    if t.level is None:
        return "?"
    if t.root:
        return "pgd"
    names = tr.level_names(t.entry_size)
    return names[t.level - 1] if t.level <= len(names) else f"L{t.level}"


def _decoded(tr: WriteTracer, t: Table, value: int) -> Decoded:
    return decode(value, t.level, t.entry_size, pdpt=tr.arch == "i386-pae" and t.level == 3)


def _xen_frame(tr: WriteTracer, addr: int) -> dict[str, str]:
    if tr.xen_hv is None:
        return {}
    mfn = addr >> 12
    return {"mfn": f"{mfn:#x}", "pfn": f"{int(tr.xen_hv.frames.pfn_of(mfn)):#x}"}


def view_json(tr: WriteTracer, v: View) -> dict[str, Any]:
    r, t = v.run, v.run.table
    k = v.first
    old, new = tr.raw(r, r.old_at(k)), tr.raw(r, r.new_at(k))
    starts = [(s + k * span, s + (k + v.count) * span) for s, span in _starts(tr, r)]
    dec = {side: {**_decoded(tr, t, val).to_json(), **_xen_frame(tr, _decoded(tr, t, val).addr)}
           for side, val in (("old", old), ("new", new))}
    out: dict[str, Any] = {
        "phase": r.phase, "function": r.function, "op": r.op, "table": t.name, "table_pa": f"{t.pa:#x}",
        "level": t.level, "level_name": level_name(tr, t), "level_how": t.how, "index": r.index + k,
        "count": v.count, "va": [f"{starts[0][0]:#x}", f"{starts[0][1]:#x}"] if starts else None,
        "va_aliases": [[f"{a:#x}", f"{b:#x}"] for a, b in starts[1:]], "via": None if r.via is None else
        f"{r.via + k * t.entry_size:#x}", "old": f"{old:#x}", "new": f"{new:#x}", "old_step": f"{r.old_step:#x}",
        "new_step": f"{r.new_step:#x}", "steps_of": "pfn view" if r.pfn_view else "values",
        "decoded": dec, "points_to": r.target.name if r.target else None}
    if r.pfn_view:
        out["old_pfn_view"], out["new_pfn_view"] = f"{r.old_at(k):#x}", f"{r.new_at(k):#x}"
    out["table_use"] = t.use
    if t.pfn is not None:
        out["table_pfn"] = f"{t.pfn:#x}"
    return out


def to_json(tr: WriteTracer, f: Filter) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``table_writes`` list and its summary (``table_writes_stats``: totals, the filter, every table
    page the boot had with its level and how the level is known)."""
    views = select(tr, f)
    stats = {"filter": f.describe(), "stores": tr.totals.stores, "entries": tr.totals.entries,
             "changed": tr.totals.changed, "dropped": tr.totals.dropped, "runs": len(tr.runs), "shown": len(views),
             "tables": [{"table": t.name, "table_use": t.use, "table_pa": f"{t.pa:#x}", "level": t.level,
                         "level_how": t.how} for t in tr.registry.epochs]}
    return [view_json(tr, v) for v in views], stats


def _short(tr: WriteTracer, t: Table, value: int, target: Table | None) -> str:
    d = _decoded(tr, t, value)
    if not d.present:
        return "-" if value == 0 else "not present"
    flags = " ".join(d.flags)
    if d.leaf is not None:
        where = f"{d.addr:#x}"
        if tr.xen_hv is not None:
            pfn = int(tr.xen_hv.frames.pfn_of(d.addr >> 12))
            where = f"mfn {d.addr >> 12:#x} (pfn {pfn:#x})" if pfn >> 63 == 0 else f"mfn {d.addr >> 12:#x} (no pfn)"
        return f"{flags} {d.leaf} → {where}"
    if t.level is None:
        return f"{flags} → {d.addr:#x}"
    return f"{flags} → {target.name if target else hex(d.addr)}"


def _va_text(tr: WriteTracer, v: View) -> str:
    starts = _starts(tr, v.run)
    if not starts:
        return ""
    s, span = starts[0]
    a, b = s + v.first * span, s + (v.first + v.count) * span - 1
    more = f" (+{len(starts) - 1} alias{'es' if len(starts) > 2 else ''}: " + ", ".join(
        f"{x + v.first * sp:#x}" for x, sp in starts[1:4]) + (" …" if len(starts) > 4 else "") + ")" \
        if len(starts) > 1 else ""
    return f"va {a:#x}-{b:#x}{more}"


def view_line(tr: WriteTracer, v: View) -> str:
    r, t = v.run, v.run.table
    k = v.first
    i = r.index + k
    where = f"[{i}]" if v.count == 1 else f"[{i}..{i + v.count - 1}] ×{v.count}"
    old, new = tr.raw(r, r.old_at(k)), tr.raw(r, r.new_at(k))
    vals = f"{old:#x} → {new:#x}"
    if v.count > 1:
        steps = []
        if r.old_step:
            steps.append(f"old {_signed(r.old_step)}")
        if r.new_step:
            steps.append(f"new {_signed(r.new_step)}")
        view = " in the pfn view" if r.pfn_view else ""
        vals += f" ({', '.join(steps)} each{view})" if steps else " (each)"
    lvl = f"L{t.level} {level_name(tr, t)}" if t.level else "L?"
    use = f", use {t.use}" if t.use > 1 else ""
    via = f" via {r.via + k * t.entry_size:#x}" if r.via is not None else ""
    return (f"  {r.function:<28} {t.name}{where} ({lvl} @{t.pa:#x}{use})  {vals}  "
            f"[{_short(tr, t, old, None)} ⇒ {_short(tr, t, new, r.target)}]  {_va_text(tr, v)}  "
            f"{{{r.op}{via}}}").rstrip()


def _signed(step: int) -> str:
    s = step - (1 << 64) if step >> 63 else step
    return f"{'+' if s >= 0 else '-'}{abs(s):#x}"


def render_text(tr: WriteTracer, f: Filter) -> list[str]:
    views = select(tr, f)
    tot = tr.totals
    out = [f"== table writes ({f.describe()}): {len(views)} of {len(tr.runs)} runs; the boot made {tot.stores} "
           f"stores into page tables, {tot.entries} entries, {tot.changed} changed"
           + (f", {tot.dropped} not kept" if tot.dropped else "")]
    phase = None
    for v in views:
        if v.run.phase != phase:
            phase = v.run.phase
            out.append(f" -- {phase or 'start'}")
        out.append(view_line(tr, v))
    shown = {id(v.run.table): v.run.table for v in views}
    if shown:
        out.append(" -- tables (level: how it is known)")
        for t in shown.values():
            pfn = f" pfn {t.pfn:#x}" if t.pfn is not None else ""
            use = f" (use {t.use})" if t.use > 1 else ""
            out.append(f"  {t.name + use:<28} @{t.pa:#x}{pfn}  L{t.level or '?'} {level_name(tr, t)}: {t.how}")
    return out
