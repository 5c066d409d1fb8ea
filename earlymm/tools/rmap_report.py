"""``earlymm rmap``'s output: per address space, every VA mapping the physical address (text or JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earlymm.tools.address_spaces import NamedSpace
from earlymm.tools.rmap import Mapping, PathStep, Search
from earlymm.tools.symbols.kaslr import Symbolizer
from earlymm.tools.translate import PAGE_NAMES


@dataclass
class SpaceAnswer:
    named: NamedSpace
    found: Search


def rights(m: Mapping) -> str:
    """``SW-``: user/supervisor, writable/read-only, executable or not — as ``translate`` prints them."""
    return f"{'U' if m.user else 'S'}{'W' if m.write else 'R'}{'-' if m.nx else 'X'}"


def path_text(path: tuple[PathStep, ...]) -> str:
    return " → ".join(f"{s.level} {s.table:#x}[{s.index}]={s.entry:#x}" for s in path)


def _tag(sym: Symbolizer | None, va: int) -> str:
    label = sym.va_label(va) if sym is not None else None
    return f" <{label}>" if label else ""


def _size(n: int) -> str:
    return PAGE_NAMES.get(n, f"{n:#x}")


def unread_text(s: Search) -> list[str]:
    out = []
    if s.unread:
        shown = ", ".join(f"{t:#x}" for t in s.unread[:8]) + (", …" if len(s.unread) > 8 else "")
        out.append(f"{len(s.unread)} table(s) could not be read ({shown}): mappings through them are unknown")
    if s.capped:
        out.append("the table limit (--max-tables) was reached: some tables were not walked")
    if s.stopped:
        out.append("the search stopped after its work limit (hostile tables?): the list is partial")
    return out


def text(pa: int, answers: list[SpaceAnswer], sym: Symbolizer | None, max_aliases: int) -> str:
    pa_label = sym.pa_label(pa) if sym is not None else None
    lines = [f"physical {pa:#x}{f' <{pa_label}>' if pa_label else ''}"]
    for a in answers:
        sp, s = a.named.space, a.found
        total = sum(m.count for m in s.mappings)
        head = f"cr3 {sp.cr3:#x} ({a.named.label}, {sp.mode.value} paging): "
        lines.append(head + (f"{total} mapping(s)" if total else "not mapped") +
                     ("" if s.complete else " in what could be read"))
        sem = sp.semantics("arch")
        for m in s.mappings:
            page = f"{_size(m.page_size):>3}  {rights(m)}"
            if m.count <= max_aliases and len(m.samples) == m.count:
                for va in m.samples:
                    lines.append(f"  {va:#018x}{_tag(sym, va)}  {page}  {path_text(m.path_of(va, sem))}")
                continue
            how = "through different tables" if m.mixed else "the same tables and entries, other indices"
            lines.append(f"  {m.va:#018x}{_tag(sym, m.va)} … {m.last_va:#018x}: {m.count} aliases ({how})  {page}")
            lines.append(f"      first: {path_text(m.path)}")
        lines += [f"  incomplete: {t}" for t in unread_text(s)]
    return "\n".join(lines) + "\n"


def to_json(image: str, pa: int, answers: list[SpaceAnswer], sym: Symbolizer | None) -> dict[str, Any]:
    def mapping(m: Mapping) -> dict[str, Any]:
        d: dict[str, Any] = {"va": f"{m.va:#x}"}
        if sym is not None:
            d["va_symbol"] = sym.va_label(m.va)
        d |= {"aliases": m.count, "last_va": f"{m.last_va:#x}", "sample_vas": [f"{v:#x}" for v in m.samples],
              "page_va": f"{m.page_va:#x}", "page_pa": f"{m.page_pa:#x}", "page_size": f"{m.page_size:#x}",
              "user": m.user, "write": m.write, "nx": m.nx, "same_path_for_all": not m.mixed,
              "path": [{"level": s.level, "table": f"{s.table:#x}", "index": s.index, "entry": f"{s.entry:#x}"}
                       for s in m.path]}
        return d

    doc: dict[str, Any] = {"image": image, "pa": f"{pa:#x}"}
    if sym is not None:
        doc["pa_symbol"] = sym.pa_label(pa)
        doc["symbols"] = sym.describe()
    doc["address_spaces"] = [{
        "cr3": f"{a.named.space.cr3:#x}", "sources": a.named.sources, "mode": a.named.space.mode.value,
        "complete": a.found.complete, "total": sum(m.count for m in a.found.mappings),
        "mappings": [mapping(m) for m in a.found.mappings],
        "unread_tables": [f"{t:#x}" for t in a.found.unread], "notes": unread_text(a.found),
    } for a in answers]
    return doc
