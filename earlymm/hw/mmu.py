"""The MMU: ``probe`` (no side effects) and ``translate`` (commits A/D, fills the TLB) (design §7.4).

Both run the same walk: ``walk.py``'s, specialised for the current plan by ``fastwalk.py``. ``translate``
first consults the TLB, sets the accessed/dirty bits the walk asked for with a locked read-modify-write
(SDM §4.8), and drops the faulting page's TLB entries on a #PF (SDM §4.10.4.1: a #PF invalidates the
translations for the faulting address).
"""

from __future__ import annotations

from earlymm.arch.entry import mask
from earlymm.arch.flags import Cr4
from earlymm.arch.modes import Features, PagingMode
from earlymm.hw.fastwalk import Walker, tiered_walker
from earlymm.hw.memory import PhysMem
from earlymm.hw.regs import ControlRegs
from earlymm.hw.rights import check_rights
from earlymm.hw.tlb import PscEntry, Tlb, TlbEntry
from earlymm.hw.walk import OK, PF, WalkPlan, WalkResult, compile_plan

_new = tuple.__new__


class Mmu:
    def __init__(self, mem: PhysMem, regs: ControlRegs, features: Features, tlb: Tlb | None = None) -> None:
        self.mem = mem
        self.regs = regs
        self.features = features
        self.tlb = tlb if tlb is not None else Tlb()
        self.plan: WalkPlan = compile_plan(regs.cr0, regs.cr4, regs.efer, features)
        self._walk: Walker | None = None  # the plan's walker (tiered: reference first), bound on first use
        self.paging = False
        self.root = 0
        self.pcid = 0
        self.pge = False
        self.reload()

    def reload(self) -> None:
        """Recompile after any CR0/CR3/CR4/EFER change (the CPU calls this; nothing is cached beyond it)."""
        r = self.regs
        self.plan = compile_plan(r.cr0, r.cr4, r.efer, self.features)
        # Register programming passes through plans that never walk: bind the walker when one does.
        self._walk = None
        mode = self.plan.mode
        self.paging = mode is not PagingMode.DISABLED
        if mode is PagingMode.LEGACY32:
            self.root = r.cr3 & mask(31, 12)
        elif mode is PagingMode.PAE:
            self.root = r.cr3 & mask(31, 5)
        else:
            self.root = r.cr3 & mask(self.features.maxphyaddr - 1, 12)
        self.pcid = r.cr3 & 0xFFF if r.cr4 & Cr4.PCIDE else 0
        self.pge = bool(r.cr4 & Cr4.PGE)

    @property
    def mode(self) -> PagingMode:
        return self.plan.mode

    @property
    def walk(self) -> Walker:
        """``walk(mem, plan, root, va, …)`` for the current plan, as a function of (root, va, …)."""
        return self._walk or self._bind()

    def _bind(self) -> Walker:
        plan = self.plan

        def built(fast: Walker) -> None:
            if self.plan is plan:
                self._walk = fast

        self._walk = tiered_walker(self.mem, plan, built)
        return self._walk

    def probe(self, va: int, kind: int = 0, user: bool = False, implicit: bool = False,
              ac: bool | None = None) -> WalkResult:
        """Walk the tables for this access; change nothing (no A/D, no TLB)."""
        r = self.regs
        return (self._walk or self._bind())(self.root, va, kind, user, implicit, r.ac if ac is None else ac, r.pkru,
                                            r.pkrs, r.pdptes)

    def translate(self, va: int, kind: int = 0, user: bool = False, implicit: bool = False,
                  ac: bool | None = None) -> WalkResult:
        """Translate as the CPU does: TLB first, else walk, commit A/D, fill the TLB on success."""
        r = self.regs
        acf = r.ac if ac is None else ac
        tlb = self.tlb
        plan = self.plan
        if tlb.enabled and self.paging:
            e = tlb.lookup(va, self.pcid, self.pge)
            if e is not None and (kind != 1 or e.dirty):
                acc = e.acc
                # Without SMAP or keys a supervisor data access needs only RW (with CR0.WP): the common case
                # needs no call; everything else is check_rights' (the same rules, SDM §4.6).
                if (not user and kind != 2 and plan.simple and (kind == 0 or acc & 2 or not plan.wp)) or \
                        check_rights(plan, kind, user, implicit, acf, acc & 4 != 0, acc & 2 != 0, not acc >> 63,
                                     e.pkey, r.pkru, r.pkrs) is None:
                    return _new(WalkResult, (va, kind, user, OK, [], e.pa | (va & (e.size - 1)), e.size, 0, None,
                                             acc, None, 0, e.pkey))
                # A cached entry that forbids the access is re-walked, as QEMU's softmmu does.
                tlb.invlpg(va, self.pcid)
        prefixes = self._prefixes(va) if tlb.enabled and tlb.psc_enabled and plan.va_bits else None
        if prefixes is not None:
            res = self._walk_with_psc(va, kind, user, implicit, acf, prefixes)
        else:
            res = (self._walk or self._bind())(self.root, va, kind, user, implicit, acf, r.pkru, r.pkrs, r.pdptes)
        if res.ad_updates:
            mem = self.mem
            for u in res.ad_updates:
                cur = mem.read_int(u.addr, u.size)
                mem.write_int(u.addr, u.size, cur | (u.new & ~u.old))
        if res.outcome == OK:
            if tlb.enabled and self.paging:
                leaf = res.path[-1] | (0x60 if kind == 1 else 0x20)
                size = res.page_size
                tlb.fill(TlbEntry(va & -size & ((1 << 64) - 1), res.pa & -size, size, res.acc, res.pkey,
                                  bool(leaf & 0x40), bool(leaf & 0x100) and self.pge, self.pcid))
                if prefixes is not None:
                    self._psc_fill(res, prefixes)
        elif res.outcome == PF:
            # The #PF drops the TLB and paging-structure-cache entries for this address (SDM §4.10.4.1),
            # so nothing of the faulting walk is cached.
            tlb.invlpg_tlb_only(va, self.pcid)
            if prefixes is not None:
                tlb.psc_drop(self.pcid, prefixes)
        return res

    def _prefixes(self, va: int) -> list[tuple[int, int]] | None:
        """(level index of a table, VA prefix that selects it) for each cacheable level, deepest first;
        None for a non-canonical address (it never reaches the caches)."""
        plan = self.plan
        if (va >> (plan.va_bits - 1)) not in (0, plan.canon_ones):
            return None
        levels = plan.levels
        va &= (1 << plan.va_bits) - 1
        return [(li, va >> levels[li - 1].shift) for li in range(len(levels) - 1, 0, -1)]

    def _walk_with_psc(self, va: int, kind: int, user: bool, implicit: bool, ac: bool,
                       prefixes: list[tuple[int, int]]) -> WalkResult:
        r = self.regs
        hit = self.tlb.psc_lookup(prefixes, self.pcid)
        if hit is None:
            return self.walk(self.root, va, kind, user, implicit, ac, r.pkru, r.pkrs, r.pdptes)
        li, e = hit
        return self.walk(e.table, va, kind, user, implicit, ac, r.pkru, r.pkrs, r.pdptes, li, e.acc)

    def _psc_fill(self, res: WalkResult, prefixes: list[tuple[int, int]]) -> None:
        """Cache each table-pointing entry a successful walk used (their A bits are now set)."""
        plan = self.plan
        pointers = res.path[1:-2:2]
        if not pointers:
            return
        by_level = dict(prefixes)
        acc = 0x8000_0000_0000_0067
        if res.first:
            hit = self.tlb.psc.get(res.first, {}).get(by_level[res.first] << 13 | self.pcid)
            if hit is None:
                return
            acc = hit.acc
        for k, ent in enumerate(pointers):
            li = res.first + k
            acc &= ent ^ (1 << 63)
            self.tlb.psc_fill(li + 1, by_level[li + 1], PscEntry(ent & plan.levels[li].table_addr, acc, self.pcid))
