"""``earlymm translate``: explain, level by level, what the CPU does for each access.

Accesses run in order on one CPU (A/D bits set by one are seen by the next; they live in the
copy-on-write memory, never in the image file). The TLB is off unless asked for, so every access shows
its whole walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earlymm.arch.entry import Entry
from earlymm.arch.flags import describe_pf_error
from earlymm.arch.modes import PagingMode
from earlymm.hw.access import AccessKind
from earlymm.hw.cpu import Cpu
from earlymm.hw.regs import CpuMode
from earlymm.hw.walk import GP, HOLE, OK, WalkResult, describe_levels
from earlymm.tools.symbols.kaslr import Symbolizer

PAGE_NAMES = {1 << 12: "4K", 1 << 21: "2M", 1 << 22: "4M", 1 << 30: "1G"}


@dataclass(frozen=True, slots=True)
class Request:
    """One access to explain: address, kind, privilege, EFLAGS.AC."""

    va: int
    kind: AccessKind = AccessKind.READ
    cpl: int = 0
    ac: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the CPU did for one request, in the paging mode it was in."""

    request: Request
    result: WalkResult
    mode: PagingMode


def run(cpu: Cpu, requests: list[Request]) -> list[Outcome]:
    """Translate each request in order through ``cpu.mmu.translate`` (committing A/D)."""
    out = []
    for rq in requests:
        va = rq.va if cpu.mode is CpuMode.LONG64 else rq.va & 0xFFFF_FFFF
        res = cpu.mmu.translate(va, int(rq.kind), rq.cpl == 3, False, rq.ac)
        out.append(Outcome(rq, res, cpu.paging))
    return out


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


def rights_of(r: WalkResult) -> dict[str, bool]:
    return {"user": r.user_page, "write": r.writable, "exec": not r.xd}


def to_json(cpu: Cpu, o: Outcome, sym: Symbolizer | None = None) -> dict[str, Any]:
    """The outcome as JSON; with ``sym``, ``va_symbol``/``pa_symbol`` and each level's ``table_symbol``
    (None where nothing labels the address)."""
    r, plan = o.result, cpu.mmu.plan
    levels = []
    for lp, table, idx, ea, e in describe_levels(plan, r):
        row: dict[str, Any] = {"level": lp.level.name, "table": _hex(table), "index": _hex(idx),
                               "entry_addr": _hex(ea), "entry": _hex(e)}
        if sym is not None:
            row["table_symbol"] = sym.pa_label(table)
        if e is not None:
            leaf = bool(lp.kind == 2 or (lp.kind == 1 and e & 0x80))
            row["flags"] = Entry(e, lp.level, plan.mode).flag_names(leaf) if e & 1 else []
        levels.append(row)
    fault = None
    if r.outcome not in (OK, HOLE):
        vector = 13 if r.outcome == GP else 14
        fault = {"vector": vector, "error_code": _hex(r.error_code),
                 "cr2": _hex(r.va) if vector == 14 else None,
                 "reason": r.reason.value if r.reason else None,
                 "error_bits": describe_pf_error(r.error_code) if vector == 14 else []}
    labels = {} if sym is None else {"va_symbol": sym.va_label(o.request.va),
                                     "pa_symbol": sym.pa_label(r.pa) if r.outcome == OK else None}
    return {
        "va": _hex(o.request.va), **labels, "access": o.request.kind.word, "cpl": o.request.cpl, "ok": r.outcome == OK,
        "pa": _hex(r.pa) if r.outcome == OK else None,
        "page_size": _hex(r.page_size) if r.outcome == OK else None,
        "mode": o.mode.value, "levels": levels, "fault": fault,
        "rights": rights_of(r) if r.outcome == OK else None,
        "unreadable": _hex(r.path[-1]) if r.outcome == HOLE else None,
        "ad_updates": [{"addr": _hex(u.addr), "old": _hex(u.old), "new": _hex(u.new)}
                       for u in (r.ad_updates or [])],
    }


def _tag(sym: Symbolizer | None, label: str | None, text: str = "") -> str:
    return f"{text}<{label}>" if sym is not None and label is not None else ""


def to_text(cpu: Cpu, o: Outcome, sym: Symbolizer | None = None) -> str:
    """The walk level by level; with ``sym``, the VA, each table and the PA labelled ``<name+0xoff>``."""
    r, plan = o.result, cpu.mmu.plan
    rq = o.request
    va_tag = _tag(sym, sym.va_label(rq.va) if sym else None, " ")
    lines = [f"{rq.va:#018x}{va_tag} {rq.kind.word} cpl={rq.cpl}{' ac' if rq.ac else ''} [{o.mode.value} paging]"]
    acc_user, acc_write, acc_exec = True, True, True
    for lp, table, idx, ea, e in describe_levels(plan, r):
        head = f"  {lp.level.name:<5} table {table:#014x} [{idx:3d}] @ {ea:#014x} = "
        if e is None:
            lines.append(head + "<unreadable: not in the image>")
            continue
        leaf = bool(e & 1 and (lp.kind == 2 or (lp.kind == 1 and e & 0x80)))
        flags = " ".join(Entry(e, lp.level, plan.mode).flag_names(leaf)) if e & 1 else "not present"
        if e & 1 and lp.rights:
            acc_user &= bool(e & 4)
            acc_write &= bool(e & 2)
            acc_exec &= not (plan.nxe and e >> 63)
        so_far = f"{'U' if acc_user else 'S'}{'W' if acc_write else 'R'}{'X' if acc_exec else '-'}"
        tab = _tag(sym, sym.pa_label(table) if sym else None, "  table ")
        lines.append(head + f"{e:#018x}  {flags:<28} rights {so_far}{'  (leaf)' if leaf else ''}{tab}")
    if r.outcome == OK:
        pa_tag = _tag(sym, sym.pa_label(r.pa) if sym else None, " ")
        lines.append(f"  => pa {r.pa:#x}{pa_tag} ({PAGE_NAMES.get(r.page_size, hex(r.page_size))} page, "
                     f"{'user' if r.user_page else 'supervisor'}, {'writable' if r.writable else 'read-only'}, "
                     f"{'no-exec' if r.xd else 'exec'})")
    elif r.outcome == HOLE:
        lines.append(f"  => unreadable: the table at {r.path[-1]:#x} is not in the image (try --absent zero)")
    elif r.outcome == GP:
        lines.append("  => #GP(0): non-canonical address (CR2 unchanged)")
    else:
        lines.append(f"  => #PF error code {r.error_code:#x}, CR2={r.va:#x}: {r.reason.value if r.reason else ''}")
        lines.append("     " + ", ".join(describe_pf_error(r.error_code)))
    for u in r.ad_updates or []:
        lines.append(f"  A/D: [{u.addr:#x}] {u.old:#x} -> {u.new:#x}")
    return "\n".join(lines)
