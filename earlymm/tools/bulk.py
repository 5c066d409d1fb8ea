"""Bulk translation: the scalar walk (``earlymm.hw.walk``) over whole numpy arrays of virtual addresses.

``translate_many`` gives, for every address, exactly what ``walk`` gives — outcome, physical address,
page size, #PF error code, effective rights — with probe semantics: no A/D writes, no TLB.

How it stays fast. A lane's fate at one level depends only on which table it is in, the rights
accumulated above (RW, US, XD) and its index bits. So the walk is turned into per-level *transition
tables* over "contexts" = (table frame, accumulated rights), one row of ``width`` codes per context:

* code ≥ 0: the lane continues at the next level in the row starting at that position;
* code < 0: the lane is finished and ``-code`` names its result in a small result table (a leaf's
  base address, page size, rights; or a fault/hole class with its error code);
* ``UNKNOWN``: the row has not been computed yet.

Per lane and level that is ``pos = row_start + index; code = table[pos]`` and two min/max ops, on
cache-sized chunks of lanes. A row is computed (its table read once through ``mem.entries8`` /
``entries4``, all its entries classified with vectorized bit ops) only when some lane first reaches
it, so work and memory follow the tables the addresses actually touch, and aliased or looping tables
cost no more than a table reached once (contexts are keyed by frame, never by path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from earlymm.arch.modes import PagingMode
from earlymm.hw.memory import PhysMem
from earlymm.hw.mmu import Mmu
from earlymm.hw.walk import ALWAYS_LEAF, GP, HOLE, OK, PF, PS_SELECTS, WalkPlan
from earlymm.tools.bulk_arrays import BOOL, COLUMNS, I64, OUTPUTS, U64, Buffers, Results, unique_inverse

__all__ = ["BulkResult", "probe_many", "translate_many"]

UNKNOWN = np.iinfo(np.int64).min
# Result ids shared by every lane that ends the same way; leaves get their own ids from FIRST_LEAF on.
RID_GP, RID_NP, RID_RSVD, RID_HOLE, FIRST_LEAF = 1, 2, 3, 4, 5
CHUNK = 1 << 15  # lanes per pass: a chunk's temporaries stay in L2, which is worth ~3x over whole arrays
ACC0 = 6  # a context's rights: RW (2) and US (4) as the walk's ``acc``, bit 0 = an XD seen above


@dataclass(frozen=True, slots=True)
class BulkResult:
    """Per-address answers, in the shape of the input. Fields mean what ``WalkResult``'s do."""

    pa: U64
    page_size: U64
    outcome: NDArray[np.uint8]  # OK / PF / GP / HOLE of earlymm.hw.walk
    error_code: NDArray[np.uint32]
    user_page: BOOL
    writable: BOOL
    xd: BOOL
    pkey: NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.pa.size)

    @property
    def ok(self) -> BOOL:
        return np.equal(self.outcome, OK)


@dataclass(frozen=True, slots=True)
class _Level:
    shift: int
    width: int  # entries per table (index mask + 1)
    leafsel: int  # entry & leafsel != 0 ⇒ leaf (PS for PDE/PDPTE, P for a PTE, 0 above)
    taddr: int
    trsvd: int
    lsize: int
    laddr: int
    lrsvd: int
    rights: bool  # PAE PDPTEs carry none
    from_regs: bool
    pse36: bool


class _Engine:
    """The transition tables of one call: built lazily as lanes reach rows, then thrown away."""

    def __init__(self, mem: PhysMem, plan: WalkPlan, root: int, kind: int, user: bool, implicit: bool,
                 ac: bool, pkru: int, pkrs: int, pdptes: tuple[int, ...]) -> None:
        self.mem, self.plan, self.pdptes = mem, plan, pdptes
        self.kind, self.user, self.implicit, self.ac, self.pkru, self.pkrs = kind, user, implicit, ac, pkru, pkrs
        self.levels = [_Level(lp.shift, lp.index_mask + 1, {ALWAYS_LEAF: 1, PS_SELECTS: 0x80}.get(lp.kind, 0),
                              lp.table_addr, lp.table_rsvd, lp.leaf_size, lp.leaf_addr, lp.leaf_rsvd,
                              lp.rights, lp.from_regs, lp.pse36) for lp in plan.levels]
        # Row 0 of every level is the sink: finished lanes ride it to the end, adding nothing.
        self.tabs: list[I64] = [np.zeros(4 * lv.width, np.int64) for lv in self.levels]
        for t, lv in zip(self.tabs, self.levels, strict=True):
            t[lv.width:] = UNKNOWN
        self.ctx: list[list[tuple[int, int]]] = [[(0, 0)] for _ in self.levels]
        self.index: list[dict[int, int]] = [{} for _ in self.levels]
        code = (2 if kind == 1 else 0) | (4 if user else 0) | (16 if kind == 2 and plan.id_reported else 0)
        self.code = code  # the error-code bits the access itself contributes (spec §1.7)
        self.results = Results()
        self.results.add(FIRST_LEAF, outcome=[0, GP, PF, PF, HOLE], error_code=[0, 0, code, code | 9, 0])
        self.root_start = self._context(0, ((root >> 12) << 3) | ACC0)

    # -- building rows -----------------------------------------------------------------------------
    def _context(self, li: int, key: int) -> int:
        """Start position of the row for context ``key`` = frame << 3 | rights at level ``li``."""
        row = self.index[li].get(key)
        if row is None:
            row = self.index[li][key] = len(self.ctx[li])
            self.ctx[li].append((key >> 3, key & 7))
            w, tab = self.levels[li].width, self.tabs[li]
            if (row + 1) * w > tab.size:
                grown = np.full(max(2 * tab.size, (row + 1) * w), UNKNOWN, np.int64)
                grown[:tab.size] = tab
                self.tabs[li] = grown
        return row * self.levels[li].width

    def _load(self, li: int, pfn: int) -> U64 | None:
        lv = self.levels[li]
        if lv.from_regs:
            return np.array(self.pdptes, dtype=np.uint64)  # PAE: the PDPTE registers, not memory
        if self.plan.entry8:
            v = self.mem.entries8(pfn)
            return None if v is None else np.frombuffer(v, dtype=np.uint64)
        v = self.mem.entries4(pfn)
        return None if v is None else np.frombuffer(v, dtype=np.uint32).astype(np.uint64)

    def fill(self, li: int, pos: I64) -> None:
        """Compute the rows holding positions ``pos`` of level ``li``."""
        lv, w = self.levels[li], self.levels[li].width
        rows, tables, rights = [], [], []
        # The distinct rows, by marking them: np.unique would sort or hash every lane.
        seen = np.zeros(len(self.ctx[li]), np.bool_)
        seen[pos >> (w.bit_length() - 1)] = True  # w is a power of two
        for row in np.flatnonzero(seen).tolist():
            pfn, r = self.ctx[li][row]
            e = self._load(li, pfn)
            if e is None:  # the table itself is unreadable: every lane reaching it is a hole
                self.tabs[li][row * w:(row + 1) * w] = -RID_HOLE
            else:
                rows.append(row)
                tables.append(e)
                rights.append(r)
        if not rows:
            return
        e2 = np.stack(tables)
        r2 = np.broadcast_to(np.array(rights, dtype=np.uint64)[:, None], e2.shape)
        codes = np.full(e2.shape, -RID_NP, np.int64)
        present = (e2 & 1) != 0
        leaf = present & ((e2 & np.uint64(lv.leafsel)) != 0)
        table = present & ~leaf
        rsvd = (leaf & ((e2 & np.uint64(lv.lrsvd)) != 0)) | (table & ((e2 & np.uint64(lv.trsvd)) != 0))
        codes[rsvd] = -RID_RSVD
        leaf &= ~rsvd
        table &= ~rsvd
        if leaf.any():
            codes[leaf] = -self._leaves(lv, e2[leaf], r2[leaf])
        if table.any():
            codes[table] = self._children(li, e2[table], r2[table])
        where = (np.array(rows, dtype=np.int64)[:, None] * w + np.arange(w)).ravel()
        self.tabs[li][where] = codes.ravel()

    def _children(self, li: int, e: U64, r: U64) -> I64:
        lv = self.levels[li]
        if lv.rights:
            r = (r & e & np.uint64(6)) | ((r | (e >> np.uint64(63))) & np.uint64(1))
        keys = (((e & np.uint64(lv.taddr)) >> np.uint64(12)) << np.uint64(3)) | r
        uniq, inv = unique_inverse(keys)
        starts = np.array([self._context(li + 1, k) for k in uniq.tolist()], dtype=np.int64)
        return starts[inv]

    def _leaves(self, lv: _Level, e: U64, r: U64) -> I64:
        plan = self.plan
        acc = r & e & np.uint64(6)
        user_page = (acc & np.uint64(4)) != 0
        writable = (acc & np.uint64(2)) != 0
        xd = (((r | (e >> np.uint64(63))) & np.uint64(1)) != 0) & plan.nxe
        pkey = ((e >> np.uint64(59)) & np.uint64(15)) if plan.va_bits else np.zeros_like(e)
        base = e & np.uint64(lv.laddr)
        if lv.pse36 and lv.lsize == 1 << 22:
            base |= ((e >> np.uint64(13)) & np.uint64(0xFF)) << np.uint64(32)
        fault, ec = self._rights(user_page, writable, xd, pkey)
        keep = ~fault
        return self.results.add(
            e.size, outcome=np.where(fault, PF, OK), error_code=ec, user_page=user_page, writable=writable,
            xd=xd, pkey=pkey, base=base * keep, mask=np.uint64(lv.lsize - 1) * keep,
            page_size=np.uint64(lv.lsize) * keep)

    def _rights(self, user_page: BOOL, writable: BOOL, xd: BOOL, pkey: U64) -> tuple[BOOL, U64]:
        """``check_rights`` and the PK error-code bit of ``walk``, over arrays of leaves."""
        plan, kind, user = self.plan, self.kind, self.user
        pkv = np.zeros_like(user_page)
        if kind == 2:
            other = ~user_page if user else user_page & plan.smep
            fault = xd | other
        else:
            if user:
                fault = ~user_page | (~writable & (kind == 1))
            else:
                fault = (user_page & (plan.smap and (self.implicit or not self.ac))) | \
                    (~writable & (kind == 1 and plan.wp))
            # The PK bit follows from the key alone, even when another rule refused first (SDM §4.7).
            bits = np.zeros_like(pkey)
            if plan.pke:
                bits = np.where(user_page, np.uint64(self.pkru) >> (pkey * np.uint64(2)), bits)
            if plan.pks:
                bits = np.where(~user_page, np.uint64(self.pkrs) >> (pkey * np.uint64(2)), bits)
            pkv = ((bits & np.uint64(1)) != 0) | (((bits & np.uint64(2)) != 0) & (kind == 1 and (user or plan.wp)))
            fault = fault | pkv
        ec = np.where(fault, self.code | 1, 0).astype(np.uint32) | (pkv * np.uint32(0x20)).astype(np.uint32)
        return fault, ec

    # -- the lanes ---------------------------------------------------------------------------------
    def chunk(self, va: U64, buf: Buffers) -> I64:
        """Result ids of one chunk of addresses, in ``buf.res``."""
        n = va.size
        vi = va.view(np.int64)
        pos, code, res, node = buf.pos[:n], buf.code[:n], buf.res[:n], buf.node[:n]
        res.fill(0)
        node.fill(self.root_start)
        if self.plan.va_bits:  # canonical ⇔ va + 2^(n-1) < 2^n (mod 2^64)
            tmp, bad = buf.tmp[:n], buf.bad[:n]
            np.add(va, np.uint64(1 << (self.plan.va_bits - 1)), out=tmp)
            tmp >>= np.uint64(self.plan.va_bits)
            np.not_equal(tmp, 0, out=bad)
            if bad.any():
                node[bad] = 0
                res[bad] = -RID_GP
        last = len(self.levels) - 1
        for li, lv in enumerate(self.levels):
            np.right_shift(vi, lv.shift, out=pos)
            pos &= lv.width - 1
            pos += node
            # mode="clip": positions are in range by construction, and "raise" with out= buffers the result
            self.tabs[li].take(pos, out=code, mode="clip")
            if code.min() == UNKNOWN:
                self.fill(li, pos[code == UNKNOWN])
                self.tabs[li].take(pos, out=code, mode="clip")
            np.minimum(res, code, out=res)
            if li != last:
                np.maximum(code, 0, out=node)
        np.negative(res, out=res)
        return res


def translate_many(mem: PhysMem, plan: WalkPlan, root: int, vas: ArrayLike, kind: int = 0, user: bool = False,
                   implicit: bool = False, ac: bool = False, pkru: int = 0, pkrs: int = 0,
                   pdptes: tuple[int, ...] = ()) -> BulkResult:
    """``walk(mem, plan, root, va, kind, user, implicit, ac, pkru, pkrs, pdptes)`` for every ``va`` in
    ``vas`` (any shape, values as unsigned 64-bit), without side effects."""
    va_arr = np.asarray(vas, dtype=np.uint64)
    shape = va_arr.shape
    flat = np.ascontiguousarray(va_arr.ravel())
    n = flat.size
    if plan.mode is PagingMode.DISABLED:  # no walk: the address is the physical address (spec §1.2)
        flat_out: dict[str, NDArray[Any]] = {
            "page_size": np.full(n, 1 << 12, np.uint64), "outcome": np.full(n, OK, np.uint8),
            "error_code": np.zeros(n, np.uint32), "user_page": np.ones(n, np.bool_),
            "writable": np.ones(n, np.bool_), "xd": np.zeros(n, np.bool_), "pkey": np.zeros(n, np.uint8)}
        return BulkResult((flat & np.uint64(0xFFFF_FFFF)).reshape(shape),
                          **{k: a.reshape(shape) for k, a in flat_out.items()})
    if plan.pae and len(pdptes) != 4:
        raise ValueError("PAE paging needs the four PDPTE register values")
    eng = _Engine(mem, plan, root, int(kind), user, implicit, ac, pkru, pkrs, tuple(pdptes))
    out: dict[str, NDArray[Any]] = {k: np.empty(n, dt) for k, dt in COLUMNS if k in OUTPUTS}
    pa: U64 = np.empty(n, np.uint64)
    buf = Buffers.of(min(n, CHUNK))
    for s in range(0, n, CHUNK):
        v = flat[s:s + CHUNK]
        rid = eng.chunk(v, buf)
        cols = eng.results.cols  # fetched per chunk: filling rows may have grown the table
        for k, o in out.items():
            np.take(cols[k], rid, out=o[s:s + CHUNK], mode="clip")
        p = pa[s:s + CHUNK]
        np.take(cols["mask"], rid, out=p, mode="clip")
        p &= v
        base = buf.tmp[:v.size]
        np.take(cols["base"], rid, out=base, mode="clip")
        p |= base
    return BulkResult(pa.reshape(shape), **{k: o.reshape(shape) for k, o in out.items()})


def probe_many(mmu: Mmu, vas: ArrayLike, kind: int = 0, user: bool = False, implicit: bool = False,
               ac: bool | None = None) -> BulkResult:
    """``mmu.probe`` for every address: the MMU's current registers (plan, CR3, PDPTEs, PKRU/PKRS, EFLAGS.AC)."""
    r = mmu.regs
    return translate_many(mmu.mem, mmu.plan, mmu.root, vas, kind, user, implicit, r.ac if ac is None else ac,
                          r.pkru, r.pkrs, tuple(r.pdptes))
