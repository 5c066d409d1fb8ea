"""The walk specialised per plan: ``walk`` (``walk.py``) with the levels unrolled and every mask folded in.

``walk`` is the reference: one data-driven loop over ``plan.rows``, readable, and what the tests hold
everything else to. This module generates, for one ``WalkPlan``, Python source that does the same work
level by level with the plan's shifts, masks, leaf rules and canonical bounds written in as constants,
compiles it once (per distinct source) and binds it to one ``PhysMem``. Three things make it fast:

* no loop, no tuple unpacking of the plan's rows, no list appends: each level is a few operations on
  locals, and the path is built once as a list display;
* tables come from ``PhysMem.tables8``/``tables4``: a read-only table's entries are read out of its
  frame once, into a tuple, and indexed directly afterwards;
* a VA-prefix cache, like the paging-structure caches of a real CPU: for each 2 MiB (4 MiB) region
  whose upper tables are all read-only, the entries above the last table are kept, so the next address
  in the region reads one entry. It holds nothing from a writable frame, and ``PhysMem`` empties it
  when a table it may hold becomes writable (a copy-on-write A/D update), so it is never stale.

Faults and rights refusals go through the reference's own helpers (``walk.py``, ``rights.py``), so the
result of every access is the ``WalkResult`` ``walk`` returns, field for field; tests/hw/test_fastwalk.py
checks that on every mode, feature set and fault kind. Two kinds of walk are left to ``walk`` itself: one
that reaches a table the image does not hold (a hole), and one that must set an accessed or dirty bit.
The second keeps the A/D rules in one place: when one entry serves at two levels of a walk (a
self-referencing table), what the walk reads and writes depends on the order of those updates, and only
the reference models it. Kernel tables have their A bits set, so the common walk writes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import CodeType
from typing import Any, Protocol

from earlymm.arch.modes import PagingMode
from earlymm.hw.faults import Reason
from earlymm.hw.memory import MemoryHole, PhysMem
from earlymm.hw.plan import ALWAYS_LEAF, PS_SELECTS, TABLE_ONLY, XD_BIT, WalkPlan
from earlymm.hw.walk import WalkResult, _fault, rights_fault, walk

__all__ = ["ACC0", "TIER_UP", "Walker", "tiered_walker", "walker_for", "walker_source"]

ACC0 = 0x8000_0000_0000_0067  # the accumulator a walk from the root starts with (see ``walk``)
PREFIX_LIMIT = 1 << 16  # VA prefixes kept per root before the cache starts afresh
ROOT_LIMIT = 64  # roots with a prefix cache per walker
# Walks of one plan over one memory that ``tiered_walker`` leaves to the reference before it compiles the
# specialised walker: compiling costs about as much as 500 walks save (5–7 ms here), and a boot makes a
# few dozen walks per plan (its TLB answers the rest), a one-address ``translate`` one.
TIER_UP = 512


class Walker(Protocol):
    """``walk(mem, plan, root, va, …)`` with ``mem`` and ``plan`` bound."""

    def __call__(self, root: int, va: int, kind: int = 0, user: bool = False, implicit: bool = False,
                 ac: bool = False, pkru: int = 0, pkrs: int = 0, pdptes: tuple[int, ...] = (), first: int = 0,
                 acc: int = ACC0) -> WalkResult: ...


def walker_for(mem: PhysMem, plan: WalkPlan) -> Walker:
    """The specialised walker of ``plan`` over ``mem`` (built on first use, then kept with ``mem``)."""
    w: Walker | None = mem.walkers.get(plan)
    if w is None:
        w = mem.walkers[plan] = _build(mem, plan)
    return w


def tiered_walker(mem: PhysMem, plan: WalkPlan, on_build: Callable[[Walker], None] | None = None) -> Walker:
    """``plan``'s walker over ``mem`` for a caller that may walk only a few times (the MMU): the specialised
    one if it exists, else the reference ``walk`` for the first ``TIER_UP`` walks — the same results —
    after which the specialised one is built, kept with ``mem`` and handed once to ``on_build`` (so the
    caller can call it directly from then on)."""
    fast: Walker | None = mem.walkers.get(plan)
    if fast is not None:
        return fast
    # The count is the memory's, not this binding's: a boot binds again after every control-register write.
    calls: list[int] = mem.walkers.setdefault(("reference walks", plan), [0])

    def walk_tiered(root: int, va: int, kind: int = 0, user: bool = False, implicit: bool = False,
                    ac: bool = False, pkru: int = 0, pkrs: int = 0, pdptes: tuple[int, ...] = (), first: int = 0,
                    acc: int = ACC0) -> WalkResult:
        nonlocal fast
        if fast is None:
            if calls[0] < TIER_UP:
                calls[0] += 1
                return walk(mem, plan, root, va, kind, user, implicit, ac, pkru, pkrs, pdptes, first, acc)
            fast = walker_for(mem, plan)
            if on_build is not None:
                on_build(fast)
        return fast(root, va, kind, user, implicit, ac, pkru, pkrs, pdptes, first, acc)
    return walk_tiered


def _build(mem: PhysMem, plan: WalkPlan) -> Walker:
    if plan.mode is PagingMode.DISABLED:  # nothing to walk: the reference says it in one line
        def unpaged(root: int, va: int, kind: int = 0, user: bool = False, implicit: bool = False,
                    ac: bool = False, pkru: int = 0, pkrs: int = 0, pdptes: tuple[int, ...] = (), first: int = 0,
                    acc: int = ACC0) -> WalkResult:
            return walk(mem, plan, root, va, kind, user, implicit, ac, pkru, pkrs, pdptes, first, acc)
        return unpaged
    names: dict[str, Any] = dict(
        mem=mem, plan=plan, tables=mem.tables8 if plan.entry8 else mem.tables4, reference=walk, fault=_fault,
        rights_fault=rights_fault, new=tuple.__new__, WalkResult=WalkResult,
        MemoryHole=MemoryHole, NP=Reason.NOT_PRESENT, RSVD=Reason.RESERVED, NONCANONICAL=Reason.NONCANONICAL)
    source = _Source(plan)
    starts: dict[int, Walker] = {}

    def start(k: int) -> Walker:
        """The walk from level k, for the paging-structure caches: compiled when first asked for (a dump
        never uses it)."""
        w = starts.get(k)
        if w is None:
            w = starts[k] = _instantiate(source.start(k), names)
        return w

    by_root: dict[int, dict[int, Any]] = {}
    mem.derived.append(by_root)
    return _instantiate(source.main(), {**names, "by_root": by_root, "start": start})


def _instantiate(lines: list[str], names: dict[str, Any]) -> Walker:
    namespace: dict[str, Any] = {}
    exec(_compiled("\n".join(lines) + "\n"), namespace)
    walker: Walker = namespace["make"](**names)
    return walker


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> CodeType:
    return compile(source, "<earlymm specialised walk>", "exec")


def walker_source(plan: WalkPlan) -> str:
    """The Python source of ``plan``'s walker (and of its starts below the root, if any)."""
    src = _Source(plan)
    later = range(1, len(plan.levels)) if plan.va_bits else range(0)
    return "\n".join([*src.main(), *(line for k in later for line in src.start(k))]) + "\n"


class _Source:
    """Writes the walker of one plan. Level ``i`` is ``plan.levels[i]``: its table is ``t{i}``, the entry
    read ``e{i}``; the path of a walk that started at level ``k`` and stopped at ``i`` is t{k}, e{k} … e{i}."""

    HEADER = ("def make(mem, plan, tables, reference, fault, rights_fault, new, WalkResult, MemoryHole, "
              "NP, RSVD, NONCANONICAL{extra}):")

    def __init__(self, plan: WalkPlan) -> None:
        self.plan = plan
        self.levels = plan.levels
        self.n = len(plan.levels)
        # The prefix cache needs one root-to-leaf shape: not PAE, whose PDPTEs are registers passed in.
        self.prefix = not plan.pae and self.n >= 2
        self.pshift = self.levels[-2].shift if self.n >= 2 else 0
        self.large = any(lp.kind == PS_SELECTS for lp in self.levels)

    def main(self) -> list[str]:
        """``make(..., by_root, start)`` returning ``walk``, the entry point from the root."""
        return [self.HEADER.format(extra=", by_root, start"), "    cur_root = -1", "    pref = {}", "",
                *self.function(0), "    return walk"]

    def start(self, k: int) -> list[str]:
        """``make(...)`` returning ``walk_from_k``: a walk that a paging-structure cache let start at level
        k, with the accumulator ``acc`` of the entries above."""
        return [self.HEADER.format(extra=""), *self.function(k), f"    return walk_from_{k}"]

    # -- one entry point ------------------------------------------------------------------------------
    def function(self, k: int) -> list[str]:
        """``walk`` (k = 0: from the root, with the prefix cache), or ``walk_from_k`` for a walk that a
        paging-structure cache let start at level k with the accumulator ``acc``."""
        plan, main = self.plan, k == 0
        args = "root, va, kind, user, implicit, ac, pkru, pkrs, pdptes"
        if not main:
            body = [f"def walk_from_{k}({args}, acc):", "    acc0 = acc"]
            base = "acc"
        else:
            body = ["def walk(root, va, kind=0, user=False, implicit=False, ac=False, pkru=0, pkrs=0, pdptes=(), "
                    f"first=0, acc={ACC0:#x}):"]
            base = f"{ACC0:#x}"
            if self.prefix:
                body.append("    nonlocal cur_root, pref")
            body.append(f"    if first or acc != {ACC0:#x}:")
            if plan.va_bits:
                body += ["        if first:", f"            return start(first)({args}, acc)"]
            body.append(f"        return reference(mem, plan, {args}, first, acc)")
        if plan.va_bits:
            body += [f"    top = va >> {plan.va_bits - 1}",
                     f"    if top and top != {plan.canon_ones:#x}:",
                     f"        return new(WalkResult, (va, kind, user, 2, [], 0, 0, 0, NONCANONICAL, 0, None, {k}, 0))"]
        else:
            body.append("    va &= 0xFFFFFFFF")
        use_prefix = main and self.prefix
        if use_prefix:
            body += self.prefix_lookup()
        body += ["    try:",
                 *["        " + line for line in self.levels_code(k, base, use_prefix)],
                 "    except MemoryHole:  # a table the image does not hold: the reference says how far it got",
                 f"        return reference(mem, plan, {args}, {k}, {base})"]
        return self.indent(body)

    def prefix_lookup(self) -> list[str]:
        last = self.n - 1
        names = ", ".join(f"t{j}, e{j}" for j in range(last))
        return ["    if root != cur_root:",
                f"        if len(by_root) >= {ROOT_LIMIT}:",
                "            by_root.clear()",
                "        pref = by_root.setdefault(root, {})",
                "        cur_root = root",
                f"    p = pref.get(va >> {self.pshift})",
                "    if p is not None:",
                *(["        if len(p) == 6:  # a large page: everything but the offset is known",
                   "            head, e, acc, base, lmask, lsize = p",
                   "            path = [*head]",
                   "            pa = base | (va & lmask)",
                   *["            " + line for line in self.granted(0, "e", "lsize")]]
                  if self.large else []),
                f"        {names}, t{last}, l{last}, upper = p",
                f"        e{last} = l{last}[{self.index(last)}]",
                *["        " + line for line in self.leaf(last, 0, "upper")]]

    def levels_code(self, k: int, base: str, use_prefix: bool) -> list[str]:
        """Levels k … n-1 of a walk whose table at level k is ``root``."""
        out = [f"t{k} = root"]
        for i in range(k, self.n):
            lp = self.levels[i]
            if lp.from_regs:  # PAE: the PDPTE registers, loaded at the CR3 write; no rights, no A/D
                out += [f"e{i} = pdptes[{self.index(i)}]",
                        f"if not e{i} & 1:",
                        f"    return fault(plan, va, kind, user, [t{k}, e{i}], NP, {k})",
                        f"t{i + 1} = e{i} & {lp.table_addr:#x}"]
                continue
            out += [f"l{i} = tables[t{i}]"]
            if lp.kind == ALWAYS_LEAF:
                out.append(f"upper = {self.upper(k, i, base)}")
                if use_prefix:
                    out += self.prefix_store(k)
                out.append(f"e{i} = l{i}[{self.index(i)}]")
                out += self.leaf(i, k, "upper")
                break
            out.append(f"e{i} = l{i}[{self.index(i)}]")
            fastmask = 1 | lp.table_rsvd | (0x80 if lp.kind == PS_SELECTS else 0)
            out += [f"if e{i} & {fastmask:#x} != 1:"]
            out += ["    " + line for line in self.leaf(i, k, self.upper(k, i, base), store=use_prefix)]
            out.append(f"t{i + 1} = e{i} & {lp.table_addr:#x}")
        return out

    def prefix_store(self, k: int) -> list[str]:
        """Keep the entries above the last table when every table above it is read-only (a tuple)."""
        last = self.n - 1
        ro = " and ".join(f"l{j}.__class__ is tuple" for j in range(k, last))
        names = ", ".join(f"t{j}, e{j}" for j in range(k, last))
        return [f"if {ro}:",
                f"    if len(pref) >= {PREFIX_LIMIT}:",
                "        pref.clear()",
                f"    pref[va >> {self.pshift}] = ({names}, t{last}, l{last}, upper)"]

    # -- the entry where the walk stops ---------------------------------------------------------------
    def leaf(self, i: int, k: int, upper: str, store: bool = False) -> list[str]:
        """``e{i}`` is not a usable table pointer: a fault, or a leaf (then rights, A/D and the result).
        ``upper`` is the accumulator of the entries above it; ``store``: keep a large page read from
        read-only tables in the prefix cache."""
        plan, lp = self.plan, self.levels[i]
        path = "[" + ", ".join(f"t{j}, e{j}" for j in range(k, i + 1)) + "]"
        defer = self.defer(k)
        out = [f"path = {path}", *([f"acc = {upper}"] if upper != "acc" else []),
               f"if not e{i} & 1:",
               f"    return fault(plan, va, kind, user, path, NP, {k}, acc) if acc & 0x20 else {defer}"]
        if lp.kind == TABLE_ONLY:
            return [*out, f"return fault(plan, va, kind, user, path, RSVD, {k}, acc) if acc & 0x20 else {defer}"]
        bad = f"e{i} & {lp.leaf_rsvd:#x}" if lp.leaf_rsvd else ""
        if lp.kind == PS_SELECTS:
            bad = f"not e{i} & 0x80" + (f" or {bad}" if bad else "")
        if bad:
            out += [f"if {bad}:",
                    f"    return fault(plan, va, kind, user, path, RSVD, {k}, acc) if acc & 0x20 else {defer}"]
        out.append(f"acc = (acc & (e{i} ^ {XD_BIT:#x}))" + (f" | {plan.no_xd:#x}" if plan.no_xd else ""))
        out.append(f"pa = (e{i} & {lp.leaf_addr:#x}) | (va & {lp.leaf_size - 1:#x})")
        if plan.pse36 and lp.leaf_size == 1 << 22:
            out.append(f"pa |= ((e{i} >> 13) & 0xFF) << 32")
        if store and lp.kind == PS_SELECTS:
            ro = " and ".join(f"l{j}.__class__ is tuple" for j in range(k, i + 1))
            head = ", ".join(f"t{j}, e{j}" for j in range(k, i + 1))
            mask = lp.leaf_size - 1
            out += [f"if {ro}:",
                    f"    if len(pref) >= {PREFIX_LIMIT}:",
                    "        pref.clear()",
                    f"    pref[va >> {self.pshift}] = (({head}), e{i}, acc, pa ^ (va & {mask:#x}), {mask:#x}, "
                    f"{lp.leaf_size:#x})"]
        return out + self.granted(k, f"e{i}", f"{lp.leaf_size:#x}")

    def granted(self, k: int, e: str, size: str) -> list[str]:
        """The leaf ``e`` (page size ``size``) gives ``pa`` with rights ``acc``: check them for this access,
        note the A/D writes, return the result."""
        plan, defer = self.plan, self.defer(k)
        ok = f"return new(WalkResult, (va, kind, user, 0, path, pa, {size}, 0, None, acc, None, {k}, 0))"
        checked = [f"refused = rights_fault(plan, va, kind, user, implicit, ac, pkru, pkrs, path, {e}, acc, {k})",
                   "if refused is not None:",
                   f"    return refused if acc & 0x20 else {defer}",
                   f"if not acc & 0x20 or kind == 1 and not {e} & 0x40:",
                   f"    return {defer}",
                   ok]
        # A supervisor read is allowed once the leaf is reached unless SMAP or a protection key may refuse
        # it: SMAP and PKRU only for a user page, PKRS only for a supervisor page and a non-zero PKRS.
        maybe = ["kind", "user"]
        if plan.smap or plan.pke:
            maybe.append("acc & 4")
        if plan.pks:
            maybe.append("pkrs")
        return [f"if {' or '.join(maybe)}:", *["    " + line for line in checked],
                "if not acc & 0x20:", f"    return {defer}", ok]

    # -- small pieces ---------------------------------------------------------------------------------
    def defer(self, k: int) -> str:
        """The same walk by the reference: for one that must write an A or D bit (see the module's note)."""
        acc = "acc0" if k else f"{ACC0:#x}"
        return f"reference(mem, plan, root, va, kind, user, implicit, ac, pkru, pkrs, pdptes, {k}, {acc})"

    def index(self, i: int) -> str:
        lp = self.levels[i]
        return f"(va >> {lp.shift}) & {lp.index_mask:#x}"

    def upper(self, k: int, i: int, base: str) -> str:
        """The accumulator after the table pointers of levels k … i-1 (PAE's PDPTE carries no rights)."""
        terms = [f"(e{j} ^ {XD_BIT:#x})" for j in range(k, i) if not self.levels[j].from_regs]
        return " & ".join([base, *terms])

    @staticmethod
    def indent(body: list[str]) -> list[str]:
        return ["    " + line for line in body] + [""]
