"""Where the model's tables differ from a real kernel's at the same point of the boot, in words.

Compared, at one stop: the control-register bits that decide how tables are read (CR0.WP, CR4.PSE/PGE/
PAE/LA57, EFER.NXE), which top table CR3 holds, every present leaf reachable from CR3 (VA, PA, page size,
attribute bits), every table link (per level and VA: the attribute bits of the entry that points at a
lower table; where the tables themselves sit in memory is the allocator's business and not compared),
``early_top_pgt`` too when CR3 has left it, the pool pages used (``next_early_pgt``), and (on a fixture
that measured it) where the decompressor put its 5-level trampoline. Differences are merged into VA ranges
so that one wrong decision reads as one line.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from dataclasses import dataclass

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.arch.modes import Features
from earlymm.tools.midboot.enumerate import Enumeration, Leaf, Link, enumerate_space, flag_text
from earlymm.tools.midboot.fixture import Fixture, Stop
from earlymm.tools.midboot.model import ModelStop
from earlymm.tools.midboot.roles import Roles

# nokaslr bases (page_64_types.h, spec §2.3): the direct map at 0xffff888000000000 (4-level, 64 TiB) or
# 0xff11000000000000 (5-level, 4 PiB); identity addresses run to 2^47 or 2^56
REGIONS = ((0xFFFF_8880_0000_0000, 0xFFFF_C880_0000_0000, "direct map"),
           (0xFF11_0000_0000_0000, 0xFF21_0000_0000_0000, "direct map"),
           (0xFFFF_FFFF_8000_0000, 0xFFFF_FFFF_C000_0000, "kernel image map"),
           (0xFFFF_FFFF_FF00_0000, 1 << 64, "fixmap/vsyscall"), (0, 1 << 56, "identity map"))
REG_BITS = (("CR0", 0, Cr0.WP, "WP"), ("CR4", 2, Cr4.PSE, "PSE"), ("CR4", 2, Cr4.PAE, "PAE"),
            ("CR4", 2, Cr4.PGE, "PGE"), ("CR4", 2, Cr4.LA57, "LA57"), ("CR4", 2, Cr4.SMEP, "SMEP"),
            ("CR4", 2, Cr4.SMAP, "SMAP"), ("EFER", 3, Efer.NXE, "NXE"))


def region(va: int) -> str:
    return next((name for lo, hi, name in REGIONS if lo <= va < hi), "other")


def size_text(size: int) -> str:
    return {1 << 12: "4K", 1 << 21: "2M", 1 << 30: "1G"}.get(size, hex(size))


@dataclass(frozen=True, slots=True)
class Piece:
    """One VA segment where the two sides disagree (``None``: that side maps nothing there)."""

    start: int
    end: int
    real: Leaf | None
    model: Leaf | None

    def key(self) -> tuple[object, ...]:
        return tuple((lf.size, lf.flags) if lf else None for lf in (self.real, self.model))


def _cover(leaves: list[Leaf], starts: list[int], va: int) -> Leaf | None:
    i = bisect_right(starts, va) - 1
    return leaves[i] if i >= 0 and leaves[i].va <= va < leaves[i].va + leaves[i].size else None


def _pa(lf: Leaf | None, va: int) -> int | None:
    return None if lf is None else lf.pa + va - lf.va


def leaf_pieces(real: list[Leaf], model: list[Leaf]) -> list[Piece]:
    """Segments between all leaf boundaries of both sides where they translate differently."""
    real, model = sorted(real, key=lambda x: x.va), sorted(model, key=lambda x: x.va)
    rs, ms = [x.va for x in real], [x.va for x in model]
    bounds = sorted({b for lf in real + model for b in (lf.va, lf.va + lf.size)})
    out: list[Piece] = []
    for lo, hi in itertools.pairwise(bounds):
        r, m = _cover(real, rs, lo), _cover(model, ms, lo)
        if r is None and m is None:
            continue
        if r and m and r.size == m.size and r.flags == m.flags and _pa(r, lo) == _pa(m, lo):
            continue
        out.append(Piece(lo, hi, r, m))
    return out


def _side(pieces: list[Piece], which: str) -> str:
    first, last = pieces[0], pieces[-1]
    lf = getattr(first, which)
    if lf is None:
        return "nothing"
    pa0, pa1 = _pa(lf, first.start), _pa(getattr(last, which), last.end - 1)
    n = len({(getattr(p, which).va) for p in pieces})
    return f"{n}×{size_text(lf.size)} PA {pa0:#x}-{(pa1 or 0) + 1:#x} [{flag_text(lf.flags, lf.size)}]"


def describe_leaves(real: list[Leaf], model: list[Leaf]) -> list[str]:
    groups: list[list[Piece]] = []
    for p in leaf_pieces(real, model):
        g = groups[-1] if groups else None
        if g and g[-1].end == p.start and g[-1].key() == p.key() and region(g[0].start) == region(p.start) and all(
                _pa(getattr(g[-1], w), g[-1].end - 1) is None or _pa(getattr(p, w), p.start) ==
                (_pa(getattr(g[-1], w), g[-1].end - 1) or 0) + 1 for w in ("real", "model")):
            g.append(p)
        else:
            groups.append([p])
    return [f"leaves {g[0].start:#x}-{g[-1].end:#x} ({region(g[0].start)}, {(g[-1].end - g[0].start) >> 10} KiB): "
            f"real {_side(g, 'real')}; model {_side(g, 'model')}" for g in groups]


LinkRow = tuple[str, int, int, int | None, int | None, str, str]  # level, va, span, flags ×2, role ×2


def _kind(role: str) -> str:
    return role.split("[")[0] if not role.startswith("RAM") else "RAM"


def describe_links(real: list[Link], model: list[Link], real_roles: Roles | None = None,
                   model_roles: Roles | None = None) -> list[str]:
    """Per (level, VA): the entry's attribute bits, and — given ``Roles`` — what kind of page it points at."""
    rk = {(lk.level, lk.va): lk for lk in real}
    mk = {(lk.level, lk.va): lk for lk in model}
    rows: list[LinkRow] = []
    for key in sorted(rk.keys() | mk.keys(), key=lambda k: (k[1], k[0])):
        r, m = rk.get(key), mk.get(key)
        rr = real_roles.role(r.table) if r and real_roles and model_roles else ""
        mr = model_roles.role(m.table) if m and real_roles and model_roles else ""
        rf, mf = (r.flags if r else None), (m.flags if m else None)
        if rf != mf or (r and m and rr != mr):
            rows.append((key[0], key[1], (r or m).span, rf, mf, rr, mr))  # type: ignore[union-attr]
    groups: list[list[LinkRow]] = []
    for row in rows:
        g = groups[-1] if groups else None
        if (g and g[-1][0] == row[0] and g[-1][1] + g[-1][2] == row[1] and g[-1][3:5] == row[3:5]
                and (_kind(g[-1][5]), _kind(g[-1][6])) == (_kind(row[5]), _kind(row[6]))):
            g.append(row)
        else:
            groups.append([row])

    def side(g: list[LinkRow], i: int) -> str:
        f = g[0][3] if i == 0 else g[0][4]
        if f is None:
            return "absent"
        first, last = (g[0][5], g[-1][5]) if i == 0 else (g[0][6], g[-1][6])
        target = "" if not first else f" → {first}" + (f"…{last}" if last != first else "")
        return f"[{flag_text(f)}]{target}"

    return [f"links {g[0][0]} {g[0][1]:#x}-{g[-1][1] + g[-1][2]:#x} ({region(g[0][1])}, {len(g)} entr"
            f"{'y' if len(g) == 1 else 'ies'}): real {side(g, 0)}, model {side(g, 1)}" for g in groups]


def describe_faults(stop: Stop, model: ModelStop) -> list[str]:
    """Early #PFs by the 2 MiB block they made the handler map: which side took them (and, for the real
    kernel, in which function)."""
    def block(cr2: int) -> int:
        return cr2 & ~0x1F_FFFF

    real: dict[int, str] = {}
    for e in stop.early_exceptions:
        if int(e["vector"]) == 14:
            real.setdefault(block(int(str(e["cr2"]), 16)), str(e["function"]))
    mod = {block(cr2) for cr2 in model.page_faults}
    out = [f"early #PF in {b:#x}+2M: real ({real[b]}), model none" for b in sorted(real.keys() - mod)]
    out += [f"early #PF in {b:#x}+2M: model, real none" for b in sorted(mod - real.keys())]
    return out


def role(roots: dict[str, int], cr3: int) -> str:
    return next((k for k, v in roots.items() if k != "cr3" and v == cr3 & ~0xFFF), "another table")


def compare_stop(stop: Stop, features: Features, model: ModelStop, real_roles: Roles | None = None) -> list[str]:
    """Every difference between the fixture's stop and the model run stopped at the same point. With
    ``real_roles`` (``Fixture.roles(stop)``) links are also compared by what they point at."""
    out: list[str] = []
    if model.outcome != "stopped":
        out.append(f"model run: {model.outcome} — {model.reason}")
    for reg, i, bit, name in REG_BITS:
        r, m = bool(stop.regs[i] & bit), bool(model.regs[i] & bit)
        if r != m:
            out.append(f"{reg}.{name}: real {int(r)}, model {int(m)}")
    rr, mr = role(stop.roots, stop.regs[1]), role(model.roots, model.regs[1])
    if rr != mr:
        out.append(f"CR3: real holds {rr}, model holds {mr}")
    real_cr3 = enumerate_space(stop.memory(), stop.regs, features)
    model_cr3 = enumerate_space(model.memory, model.regs, features, absent_zero=True)
    spaces: list[tuple[str, Enumeration, Enumeration]] = [("CR3", real_cr3, model_cr3)]
    if rr != "early_top_pgt":
        spaces.append(("early_top_pgt", enumerate_space(stop.memory(), stop.regs, features,
                                                        root=stop.roots["early_top_pgt"]),
                       enumerate_space(model.memory, model.regs, features, root=model.roots["early_top_pgt"],
                                       absent_zero=True)))
    for label, real, mod in spaces:
        for n in real.notes:
            out.append(f"{label}: real tables: {n.kind} {n.start:#x}-{n.end:#x}: {n.detail}")
        for n in mod.notes:
            out.append(f"{label}: model tables: {n.kind} {n.start:#x}-{n.end:#x}: {n.detail}")
        out += [f"{label}: {d}" for d in describe_leaves(real.leaves, mod.leaves)]
        out += [f"{label}: {d}" for d in describe_links(real.links, mod.links, real_roles,
                                                        model.roles if real_roles else None)]
    out += describe_faults(stop, model)
    if stop.next_early_pgt != model.next_early_pgt:
        out.append(f"next_early_pgt (pool pages used): real {stop.next_early_pgt}, model {model.next_early_pgt}")
    return out


def compare_decompressor(fx: Fixture, model: ModelStop) -> list[str]:
    """Where the decompressor's trampoline went: measured in QEMU's CPU log (``decompressor.json``, the
    table's page; ``None`` when no switch ran) against the model's ``configure_5level_paging``. Nothing
    to say for a fixture captured without the measurement."""
    dec = fx.decompressor
    if dec is None:
        return []
    sw = dec["switch"]
    real = int(sw["trampoline"], 16) if sw else None
    if real == model.trampoline:
        return []

    def text(v: int | None) -> str:
        return "no switch" if v is None else f"trampoline at {v:#x}"

    return [f"decompressor: real {text(real)}, model {text(model.trampoline)}"]


def summary(stop: Stop, features: Features, model: ModelStop) -> dict[str, object]:
    """Figures of both sides, for a report: leaf counts by size, table pages, pool pages."""
    def counts(e: Enumeration) -> dict[str, int]:
        c: dict[str, int] = {}
        for lf in e.leaves:
            c[size_text(lf.size)] = c.get(size_text(lf.size), 0) + 1
        return {**c, "links": len(e.links), "tables": len(e.tables)}

    return {"real": {**counts(enumerate_space(stop.memory(), stop.regs, features)),
                     "next_early_pgt": stop.next_early_pgt},
            "model": {**counts(enumerate_space(model.memory, model.regs, features, absent_zero=True)),
                      "next_early_pgt": model.next_early_pgt}}
