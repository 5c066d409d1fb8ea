"""The page walk: one data-driven loop for every paging mode (spec §1.4–§1.7; SDM Vol. 3A §4.3–§4.7).

``compile_plan`` turns the control registers and CPU features into per-level masks once; ``walk`` then
loops over those levels. It is pure: it reads memory, never writes it, and returns everything as a
``WalkResult`` value — the entries used, the outcome (translation, #PF, #GP or an unreadable table) and
the A/D writes a committing translation must make. QEMU's ``mmu_translate`` has the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from earlymm.arch.modes import PagingMode
from earlymm.hw.faults import Reason
from earlymm.hw.memory import PhysMem
from earlymm.hw.plan import ALWAYS_LEAF, PS_SELECTS, TABLE_ONLY, XD_BIT, LevelPlan, WalkPlan, compile_plan
from earlymm.hw.rights import check_rights, error_code_for, pk_violation

__all__ = ["ALWAYS_LEAF", "GP", "HOLE", "OK", "OUTCOME_NAMES", "PF", "PS_SELECTS", "TABLE_ONLY", "AdUpdate",
           "LevelPlan", "WalkPlan", "WalkResult", "compile_plan", "describe_levels", "walk"]

OK, PF, GP, HOLE = 0, 1, 2, 3
OUTCOME_NAMES = ("ok", "page-fault", "general-protection", "hole")


@dataclass(slots=True)
class AdUpdate:
    """An accessed/dirty write the CPU makes to an entry (``size`` 4 or 8 bytes)."""

    addr: int
    old: int
    new: int
    size: int


class WalkResult(NamedTuple):
    """The walk of one access. ``path`` is flat: table address, entry value, … from the root down
    (``entry_addr(plan, i)`` gives the address of entry i); each value is what the CPU read at that level,
    including an A bit an earlier level of the same walk set in the same entry (self-referencing
    tables). ``ad_updates`` are the walk's A/D writes in the CPU's order, each ``old`` being the value it
    found. A tuple because one is built per walk on the hot path, and a tuple is the cheapest value Python
    can build."""

    va: int
    kind: int
    user: bool
    outcome: int
    path: list[int]
    pa: int = 0
    page_size: int = 0
    error_code: int = 0
    reason: Reason | None = None
    # Rights over the walk: the AND of the entries used, bit 63 inverted (and forced on when NXE=0). Bit 0
    # (P) is set exactly when a leaf was reached, i.e. for translations and rights faults.
    acc: int = 0
    ad_updates: list[AdUpdate] | None = None
    first: int = 0  # index in plan.levels of path[0]: > 0 when a paging-structure cache supplied the start
    tlb_pkey: int = 0  # a TLB hit has no path to read the leaf's key from, so it carries the key

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def user_page(self) -> bool:
        """US=1 in every entry of the walk."""
        return self.acc & 4 != 0

    @property
    def writable(self) -> bool:
        """RW=1 in every entry of the walk."""
        return self.acc & 2 != 0

    @property
    def xd(self) -> bool:
        """Execute-disabled: EFER.NXE=1 and XD=1 in some entry (False when no leaf was reached)."""
        return self.acc & 1 != 0 and not self.acc >> 63

    @property
    def pkey(self) -> int:
        """The leaf's protection key (bits 62:59, 0 where the mode has none; 0 without a walked leaf)."""
        if not self.acc & 1:
            return 0
        return (self.path[-1] >> 59) & 15 if self.path else self.tlb_pkey

    def entry_addr(self, plan: WalkPlan, i: int) -> int:
        lp = plan.levels[self.first + i]
        return self.path[2 * i] + ((self.va >> lp.shift) & lp.index_mask) * lp.entry_size


_new = tuple.__new__
_XD = XD_BIT


def walk(mem: PhysMem, plan: WalkPlan, root: int, va: int, kind: int = 0, user: bool = False,
         implicit: bool = False, ac: bool = False, pkru: int = 0, pkrs: int = 0,
         pdptes: tuple[int, ...] = (), first: int = 0, acc: int = 0x8000_0000_0000_0067) -> WalkResult:
    """Translate ``va`` for an access of ``kind`` (``AccessKind``) without side effects.

    ``root`` is the top table's physical address (CR3's address bits); PAE uses ``pdptes``. A walk that
    a paging-structure cache shortened starts at level index ``first`` with table ``root`` and the
    rights combined above it in ``acc``: the AND of those entries with bit 63 inverted.
    """
    path: list[int] = []
    va_bits = plan.va_bits
    if va_bits:
        top = va >> (va_bits - 1)
        if top and top != plan.canon_ones:
            return _new(WalkResult, (va, kind, user, GP, path, 0, 0, 0, Reason.NONCANONICAL, 0, None, first, 0))
    elif plan.mode is PagingMode.DISABLED:
        return WalkResult(va, kind, user, OK, path, pa=va & 0xFFFF_FFFF, page_size=1 << 12, acc=_XD | 0x67)
    else:
        va &= 0xFFFF_FFFF
    # Tables are page-aligned below the PAE PDPT, so an entry is frame[pfn][index].
    if plan.entry8:
        view, load = mem.view8.get, mem.entries8
    else:
        view, load = mem.view4.get, mem.entries4
    table = root
    # acc ANDs every entry with XD inverted (QEMU's trick): RW, US, A, D and "no XD" survive only if
    # every entry has them. A PSC-shortened walk passes its cached accumulator in.
    if plan.pae:
        # PAE's PDPTEs live in registers loaded at the CR3 write; they carry no rights (spec §1.3).
        e = pdptes[(va >> 30) & 3]
        path.append(root)
        path.append(e)
        if not e & 1:
            return _fault(plan, va, kind, user, path, Reason.NOT_PRESENT, first)
        table = e & plan.levels[0].table_addr
    try:
        for shift, imask, fastmask, leafsel, taddr, lsize, laddr, lrsvd in (  # noqa: B007 (used after break)
                plan.rows[first:] if first else plan.rows):
            # A hole makes load() return None, and subscripting None raises TypeError (caught below).
            e = (view(table >> 12) or load(table >> 12))[(va >> shift) & imask]  # type: ignore[index]
            path.append(table)
            path.append(e)
            if e & fastmask != 1:  # not a present table pointer free of reserved bits
                break
            acc &= e ^ _XD
            table = e & taddr
    except TypeError:
        path.append(table)
        return _new(WalkResult, (va, kind, user, HOLE, path, 0, 0, 0, Reason.HOLE, 0, None, first, 0))
    if not e & 1:
        return _fault(plan, va, kind, user, path, Reason.NOT_PRESENT, first, acc)
    if not e & leafsel or e & lrsvd:
        return _fault(plan, va, kind, user, path, Reason.RESERVED, first, acc)
    acc = (acc & (e ^ _XD)) | plan.no_xd
    pa = (e & laddr) | (va & (lsize - 1))
    if plan.pse36 and lsize == 1 << 22:
        pa |= ((e >> 13) & 0xFF) << 32
    if kind or user or not plan.simple:
        refused = rights_fault(plan, va, kind, user, implicit, ac, pkru, pkrs, path, e, acc, first)
        if refused is not None:
            return refused
    # All A (and, for a write, the leaf's D) already set: the common case in kernel tables.
    ups = None if acc & 0x20 and (kind != 1 or e & 0x40) else _ad_updates(plan, va, path, kind == 1, first=first)
    return _new(WalkResult, (va, kind, user, OK, path, pa, lsize, 0, None, acc, ups, first, 0))


def rights_fault(plan: WalkPlan, va: int, kind: int, user: bool, implicit: bool, ac: bool, pkru: int, pkrs: int,
                 path: list[int], e: int, acc: int, first: int = 0) -> WalkResult | None:
    """The #PF the leaf ``e``'s combined rights ``acc`` give this access (SDM §4.6, §4.7), or None."""
    user_page, writable, pkey = acc & 4 != 0, acc & 2 != 0, (e >> 59) & 15 if plan.va_bits else 0
    why = check_rights(plan, kind, user, implicit, ac, user_page, writable, not acc >> 63, pkey, pkru, pkrs)
    if why is None:
        return None
    code = error_code_for(plan, kind, user, why)
    if (plan.pke or plan.pks) and pk_violation(plan, kind, user, user_page, pkey, pkru, pkrs):
        code |= 0x20
    return _new(WalkResult, (va, kind, user, PF, path, 0, 0, code, why, acc,
                             _ad_updates(plan, va, path, False, leaf=False, first=first), first, 0))


def _fault(plan: WalkPlan, va: int, kind: int, user: bool, path: list[int], why: Reason,
           first: int = 0, acc: int = 0) -> WalkResult:
    """A not-present or reserved-bit fault at the last entry in ``path``; ``acc`` is the AND of the
    entries above it."""
    # Entries above the failing one were used, so they get A — unless they all have it already, as
    # kernel tables do; the failing entry itself is left alone. QEMU stores A level by level exactly so
    # (tests/hw/test_unicorn_alias.py watches every store); the SDM (§4.8) leaves A on a walk that ends
    # in a fault to the implementation, so a real CPU may set fewer (spec §7 item 8: unconfirmed).
    ups = [] if acc & 0x20 else _ad_updates(plan, va, path, False, leaf=False, first=first)
    return _new(WalkResult, (va, kind, user, PF, path, 0, 0, error_code_for(plan, kind, user, why), why, 0, ups,
                             first, 0))


def _ad_updates(plan: WalkPlan, va: int, path: list[int], write: bool, leaf: bool = True,
                first: int = 0) -> list[AdUpdate]:
    """The A/D writes of the walk in ``path``, in the order the CPU makes them, and ``path`` corrected
    (in place) to the values the CPU read.

    Each table pointer gets A as soon as it is read and has passed its checks (QEMU's ``mmu_translate``
    stores it before reading the next level); the last entry gets A — and D for a ``write`` — only if
    ``leaf`` (a translation), after the rights checks. One walk can use the same entry at several levels
    (a PML4 entry that points back to its own table, a PDE that is also the PTE): the later read then
    sees the A the earlier use wrote, so that use writes nothing more, and D is still only the leaf's.
    ``walk`` reads every entry before any A/D is written; the writes of the walk only set bit 5 (A) in
    table pointers, which no check looks at, so the outcome stands and only the recorded values need
    the earlier writes folded in, here, where the updates are known.
    """
    ups: list[AdUpdate] = []
    wrote: dict[int, int] | None = None  # entry address -> value this walk stored there
    n = len(path) // 2
    levels = plan.levels
    for i in range(n):
        lp = levels[first + i]
        if lp.from_regs:  # PAE's PDPTE registers: not memory, never written
            continue
        addr = path[2 * i] + ((va >> lp.shift) & lp.index_mask) * lp.entry_size
        e = path[2 * i + 1]
        if wrote is not None and addr in wrote:
            e = path[2 * i + 1] = wrote[addr]
        if i < n - 1:
            want = e | 0x20
        elif leaf:
            want = e | (0x60 if write else 0x20)
        else:
            continue
        if want != e:
            ups.append(AdUpdate(addr, e, want, lp.entry_size))
            if wrote is None:
                wrote = {}
            wrote[addr] = want
    return ups


def describe_levels(plan: WalkPlan, r: WalkResult) -> list[tuple[LevelPlan, int, int, int, int | None]]:
    """(level plan, table address, index, entry address, entry or None if unreadable) per entry read."""
    out: list[tuple[LevelPlan, int, int, int, int | None]] = []
    for i in range((len(r.path) + 1) // 2):
        lp = plan.levels[r.first + i]
        table = r.path[2 * i]
        idx = (r.va >> lp.shift) & lp.index_mask
        e = r.path[2 * i + 1] if 2 * i + 1 < len(r.path) else None
        out.append((lp, table, idx, table + idx * lp.entry_size, e))
    return out
