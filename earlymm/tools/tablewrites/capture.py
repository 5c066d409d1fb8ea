"""Capture every page-table store of a boot where it lands: in simulated physical (machine) memory.

Every store the kernel model makes — ``ctx.wr``/``memset``/``memcpy``, ``pv_ops.mmu``'s ``set_*`` and their
runs (``set_entries``), head_64.S's direct ``movq``s, and under Xen PV the hypervisor's committed
``mmu_update``s, ptwr emulations and pin-time adjustments — ends in ``PhysMem.write_int``/``write``.
The tracer shadows those two methods (and ``Cpu.store``/``write`` for the virtual address the kernel
used, and ``Mmu.translate`` so the CPU's own accessed/dirty updates are not taken for stores) on the
machine's instances only when it is attached: a boot without ``--trace-writes`` runs the unchanged
code. Only frames the registry knows as page tables are recorded, and a store's entries are folded into
runs while they continue the previous store (same function, table, next index, values in step) — a
builder's 512 new leaves are one run, not 512 objects.

Who made each store is read off the model's own call stack (``who.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earlymm.hw.memory import Buffer
from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.tools.tablewrites.decode import points_to_table
from earlymm.tools.tablewrites.known import name_of, on_event, register_known
from earlymm.tools.tablewrites.runs import LOOP_STEPS, M64, Run, Totals, segments
from earlymm.tools.tablewrites.tables import PAGE, Registry, Table
from earlymm.tools.tablewrites.who import Attribution

MAX_RUNS = 2_000_000  # beyond this, stores are counted but not kept (a hostile boot stays bounded)
_ADDR = 0x000F_FFFF_FFFF_F000
_FRAME_BITS = (1 << 40) - 1


@dataclass
class WriteTracer:
    """Attach to a boot's machine (``boot(..., instrument=tracer.attach)``), then read ``runs`` (in store
    order), ``totals`` and ``registry`` (every table page the boot had, one ``Table`` per use)."""

    registry: Registry = field(default_factory=Registry)
    runs: list[Run] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    arch: str = "x86-64"  # "x86-64", "xen-pv", "i386", "i386-pae"
    ctx: Any = None
    _va: list[list[int]] = field(default_factory=list)  # [va, bytes consumed] of the CPU accesses in flight
    _in_walk: int = 0
    loader_pfns: list[int] = field(default_factory=list)  # the tables in use at entry (dropped with them)
    xen_hv: Any = None
    _seq: int = 0
    root: int = 0  # the last root CR3 was loaded with
    bases_memo: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # VA bases, while links stand
    _m2p: Any = None  # Xen PV: mfn → pfn of the domain's frames (-1: not the domain's), to fold by pfn
    _p2m: Any = None
    _attribution: Attribution = field(default_factory=Attribution)
    _pending: dict[int, list[Run]] = field(default_factory=dict)  # id(table) → runs stored before its level

    # -- attaching ------------------------------------------------------------------------------------
    def attach(self, ctx: Any) -> None:
        """Start tracing ``ctx``'s machine (a ``KernelContext`` or an ``I386Context``) from here on."""
        self.ctx = ctx
        plat = ctx.platform
        self.xen_hv = getattr(plat, "xen", None) if getattr(plat, "name", "") == "xen-pv" else None
        register_known(self, ctx)
        if self.xen_hv is not None:
            p2m = np.asarray(plat.p2m).astype(np.int64)
            self._p2m = p2m
            self._m2p = np.full(int(p2m.max()) + 1, -1, dtype=np.int64)
            self._m2p[p2m] = np.arange(len(p2m), dtype=np.int64)
        mem, cpu = plat.mem, ctx.cpu
        write_int, write, store, cwrite, translate = mem.write_int, mem.write, cpu.store, cpu.write, \
            cpu.mmu.translate

        def t_write_int(pa: int, size: int, value: int) -> None:
            if self._in_walk:  # the CPU setting accessed/dirty bits while it walks: not a store
                write_int(pa, size, value)
                return
            if (pa & 0xFFF) + size > PAGE:
                t_write(pa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
                return
            table = self._table(pa >> 12)
            via = self._advance(size)
            if table is None:
                write_int(pa, size, value)
                return
            self._capture(table, pa, size, via, lambda: write_int(pa, size, value))

        def t_write(pa: int, data: Buffer) -> None:
            if self._in_walk:
                write(pa, data)
                return
            view = memoryview(data).cast("B")
            pos = 0
            while pos < len(view):
                n = min(len(view) - pos, PAGE - (pa & 0xFFF))
                chunk = view[pos:pos + n]
                table = self._table(pa >> 12)
                via = self._advance(n)
                if table is None:
                    write(pa, chunk)
                else:
                    self._capture(table, pa, n, via, lambda a=pa, c=chunk: write(a, c))
                pa, pos = pa + n, pos + n

        def t_store(va: int, size: int, value: int, *, implicit: bool = False) -> None:
            self._va.append([va, 0])
            try:
                store(va, size, value, implicit=implicit)
            finally:
                self._va.pop()

        def t_cwrite(va: int, data: bytes, *, implicit: bool = False) -> None:
            self._va.append([va, 0])
            try:
                cwrite(va, data, implicit=implicit)
            finally:
                self._va.pop()

        def t_translate(*args: Any, **kw: Any) -> Any:
            self._in_walk += 1
            try:
                return translate(*args, **kw)
            finally:
                self._in_walk -= 1

        # Instance attributes shadow the methods for this machine only (nothing changes when not attached).
        mem.write_int = t_write_int
        mem.write = t_write
        cpu.store = t_store
        cpu.write = t_cwrite
        cpu.mmu.translate = t_translate
        ctx.trace.listeners.append(lambda e: on_event(self, e))

    # -- what is a table ------------------------------------------------------------------------------
    def _table(self, pfn: int) -> Table | None:
        t = self.registry.by_pfn.get(pfn)
        if t is None and self.xen_hv is not None:
            level = self.xen_hv.types.level(pfn) if self.xen_hv.frames.valid(pfn) else 0
            if level:
                t = self.registry.register(Table(f"mfn {pfn:#x}", pfn << 12, level, "Xen page type",
                                                 pfn=int(self.xen_hv.frames.pfn_of(pfn))))
        return t

    def level_names(self, entry_size: int = 8) -> tuple[str, ...]:
        if self.arch == "i386" or entry_size == 4:
            return ("pte", "pgd")
        if self.arch == "i386-pae":
            return ("pte", "pmd", "pgd")
        ctx = self.ctx
        l5 = ctx is not None and ctx.pgt.pgtable_l5_enabled
        return ("pte", "pmd", "pud", "p4d", "pgd") if l5 else ("pte", "pmd", "pud", "pgd")

    def top_level(self) -> int:
        return {"i386": 2, "i386-pae": 3}.get(self.arch, 5 if self.ctx.pgt.pgtable_l5_enabled else 4)

    def entry_size(self) -> int:
        return 4 if self.arch == "i386" else 8

    def new_table(self, name: str, pa: int, level: int | None, how: str, *, root: bool = False,
                  entry_size: int | None = None) -> Table:
        pfn = int(self.xen_hv.frames.pfn_of(pa >> 12)) if self.xen_hv is not None else None
        return self.registry.register(Table(name, pa & ~0xFFF, level, how, entry_size or self.entry_size(), root,
                                            pfn))

    def machine(self, pa: int) -> int:
        """A guest-physical address as the machine's memory has it (the p2m under Xen PV)."""
        if self.xen_hv is None:
            return pa
        return (int(self.ctx.platform.p2m[pa >> 12]) << 12) | (pa & 0xFFF)

    def load_delta(self) -> int:
        ctx = self.ctx
        return int(ctx.platform.entry.kernel_at - (ctx.layout.text - START_KERNEL_MAP))

    def _advance(self, n: int) -> int | None:
        """The VA of this memory write within the CPU access in flight (bytes are written in order)."""
        if not self._va:
            return None
        top = self._va[-1]
        va = top[0] + top[1]
        top[1] += n
        return va

    def _capture(self, table: Table, pa: int, n: int, via: int | None, do_write: Any) -> None:
        mem = self.ctx.platform.mem
        esz = table.entry_size
        off = pa & 0xFFF
        lo, hi = off // esz * esz, -(-(off + n) // esz) * esz
        pfn = pa >> 12
        frame = mem.frame(pfn)
        old = bytes(frame[lo:hi]) if frame is not None else bytes(hi - lo)
        do_write()
        after = mem.frame(pfn)
        new = bytes(after[lo:hi]) if after is not None else bytes(hi - lo)
        if via is not None:
            via -= off - lo
            # a store's own first bytes are exact; a run's later chunk is checked against the MMU
            exact = bool(self._va) and self._va[-1][1] == n and n <= 8
            if (via ^ pa) & 0xFFF or not (exact or self._maps(via, pa & ~(esz - 1))):
                via = None
        self._record(table, lo // esz, old, new, via)

    def _maps(self, va: int, pa: int) -> bool:
        res = self.ctx.cpu.mmu.probe(va)
        return bool(res.ok) and res.pa == pa

    def _record(self, table: Table, first: int, old_b: bytes, new_b: bytes, via: int | None) -> None:
        esz = table.entry_size
        if len(new_b) == esz or (old_b == new_b and not new_b.count(0) - len(new_b)):
            # one entry, or a clear_page of entries already zero: no arrays needed
            o0, n0 = int.from_bytes(old_b[:esz], "little"), int.from_bytes(new_b[:esz], "little")
            if self._m2p is not None and (o0 | n0) & 1:
                self._record_arrays(table, first, old_b, new_b, via)
                return
            n = len(new_b) // esz
            tot = self.totals
            tot.stores += 1
            tot.entries += n
            tot.changed += o0 != n0
            if len(self.runs) >= MAX_RUNS:
                tot.dropped += n
                return
            self._emit(table, [(first, n, o0, 0, n0, 0, via)], False)
            return
        self._record_arrays(table, first, old_b, new_b, via)

    def _emit(self, table: Table, segs: list[tuple[int, int, int, int, int, int, int | None]], view: bool) -> None:
        if table.root and table.how == "symbol":
            table.level = self.top_level()  # the paging mode decides (check_la57_support)
        fn, op = self._attribution.who(1)
        phase = self.ctx.phase.value if self.ctx.phase is not None else ""
        for index, m, o0, os_, n0, ns, v in segs:
            self._add(Run(self._seq, phase, fn, op, table, index, m, o0, os_, n0, ns, v, pfn_view=view))

    def _record_arrays(self, table: Table, first: int, old_b: bytes, new_b: bytes, via: int | None) -> None:
        dt = np.dtype("<u8" if table.entry_size == 8 else "<u4")
        old = np.frombuffer(old_b, dtype=dt).astype(np.uint64)
        new = np.frombuffer(new_b, dtype=dt).astype(np.uint64)
        n = len(new)
        view = False
        if self._m2p is not None:
            old_v, new_v = self._pfn_view(old), self._pfn_view(new)
            if old_v is not None and new_v is not None:
                old, new, view = old_v, new_v, True
        tot = self.totals
        tot.stores += 1
        tot.entries += n
        tot.changed += int(np.count_nonzero(old != new))
        if len(self.runs) >= MAX_RUNS:
            tot.dropped += n
            return
        segs = []
        for s, m in segments(old, new):
            o0, n0 = int(old[s]), int(new[s])
            os_ = (int(old[s + 1]) - o0) & M64 if m > 1 else 0
            ns = (int(new[s + 1]) - n0) & M64 if m > 1 else 0
            segs.append((first + s, m, o0, os_, n0, ns, None if via is None else via + s * table.entry_size))
        self._emit(table, segs, view)

    def _add(self, r: Run) -> None:
        last = self.runs[-1] if self.runs else None
        esz = r.table.entry_size
        if (last is not None and last.table is r.table and last.function == r.function and last.op == r.op
                and last.pfn_view == r.pfn_view
                and last.phase == r.phase and r.index == last.index + last.count
                and (last.via is None) == (r.via is None)
                and (r.via is None or last.via is None or r.via == last.via + esz * last.count)):
            ns = last.new_step if last.count > 1 else (r.new - last.new) & M64
            os_ = last.old_step if last.count > 1 else (r.old - last.old) & M64
            # Two single stores start a run only with a step a loop makes (a page size, or none): two
            # unrelated values side by side stay two lines.
            loop = last.count > 1 or (ns in LOOP_STEPS and os_ in LOOP_STEPS)
            if loop and (r.new == (last.new + last.count * ns) & M64 and r.old == (last.old + last.count * os_) & M64
                    and (r.count == 1 or (r.new_step & M64, r.old_step & M64) == (ns, os_))):
                last.new_step, last.old_step = ns, os_
                last.count += r.count
                self._links(r)
                return
        self._seq += 1
        r.seq = self._seq
        r.new_step &= M64
        r.old_step &= M64
        self.runs.append(r)
        self._links(r)

    def _links(self, r: Run) -> None:
        """Entries that now point at a table make it one level below this one (and place it in VA)."""
        t = r.table
        if t.level is None:
            self._pending.setdefault(id(t), []).append(r)
            return
        pdpt = self.arch == "i386-pae" and t.level == 3
        if not points_to_table(r.new, t.level, pdpt=pdpt):
            return
        if r.new_step and r.new_step & 0xFFF:
            return  # not a run of pointers
        mask = 0x000F_FFFF_FFFF_F000 if t.entry_size == 8 else 0xFFFF_F000
        seen = set()
        for k in range(r.count):
            val = self.raw(r, r.new_at(k))
            target = (val & mask) >> 12
            before = self.raw(r, r.old_at(k))
            if points_to_table(before, t.level, pdpt=pdpt) and (before & mask) >> 12 != target:
                gone = self.registry.get((before & mask) >> 12)
                if gone is not None:
                    gone.unlink(t, r.index + k)  # the entry points elsewhere now
                    self.bases_memo.clear()
            if (target, r.index + k) in seen:
                continue
            seen.add((target, r.index + k))
            child = self.registry.get(target)
            if child is None:
                child = self.new_table(self._name_of(target << 12), target << 12, t.level - 1,
                                       f"linked from {t.name}[{r.index + k}]", entry_size=t.entry_size)
            elif child.level is None:
                child.level = t.level - 1
                child.how = f"{child.how}; level: linked from {t.name}[{r.index + k}]"
                self._resolve(child)
            child.link(t, r.index + k)
            if self.bases_memo:
                self.bases_memo.clear()
            if k == 0:
                r.target = child

    def _pfn_view(self, vals: np.ndarray) -> np.ndarray | None:
        """``pte_val`` of each entry (the mfn replaced by its pfn), or None if a present entry holds a frame
        that is not the domain's (then the run is folded on the machine values)."""
        m2p = self._m2p
        present = (vals & np.uint64(1)) != 0
        mfn = ((vals >> np.uint64(12)) & np.uint64(_FRAME_BITS)).astype(np.int64)
        inside = mfn < len(m2p)
        pfn = np.where(inside, m2p[np.where(inside, mfn, 0)], -1)
        if bool((present & (pfn < 0)).any()):
            return None
        conv = (vals & ~np.uint64(_ADDR)) | (np.maximum(pfn, 0).astype(np.uint64) << np.uint64(12))
        return np.where(present, conv, vals)

    def raw(self, r: Run, value: int) -> int:
        """The value the table holds for a value of ``r`` (a pfn-view value back to its mfn)."""
        if not r.pfn_view or not value & 1:
            return value
        pfn = value >> 12 & _FRAME_BITS
        return (value & ~_ADDR & M64) | (int(self._p2m[pfn]) << 12)

    def _resolve(self, t: Table) -> None:
        for r in self._pending.pop(id(t), []):
            self._links(r)

    def _name_of(self, pa: int) -> str:
        return name_of(self, pa)
