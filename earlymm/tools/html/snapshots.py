"""The tables of a boot at the moments that matter, recorded as it runs, over the kernel's public API.

``boot()`` hands its context to a ``pv`` factory and every event to its listeners; ``BootRecorder``
uses the first only to learn the context (it returns the native ``pv_ops`` unchanged, so the boot runs
exactly as without it) and the second to read the tables from ``ctx.platform.mem`` when an event worth
a picture passes: a phase, a CR3 write, a #PF raised and handled, a pool reset, a direct-map range,
the end of the run. Bounded: at most ``max_snapshots`` snapshots of at most 2048 tables each (the end of
the run: 32768), and once ``read_budget`` tables have been read (a 64 TiB direct map is 65,000 tables)
only phases and the end get one; the page says how many events went without. Reading goes
straight to the frames — no MMU access, no A/D update, no TLB fill —
so recording changes nothing in the run (a test compares the JSON of a boot with and without it).

The snapshots share one ``DagStore``: a table whose bytes and children did not change since the last
snapshot is the same node, so a snapshot costs only the tables that changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from earlymm.arch.modes import PagingMode
from earlymm.hw.events import CrWrite, Event, FaultRaised
from earlymm.hw.memory import PhysMem
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import DirectMapRange, HandlerOutcome, Note, PhaseEntered, PoolReset, RunEnded
from earlymm.kernel.paravirt.ops import PvOps
from earlymm.tools.html.dag import DagStore, level_info
from earlymm.tools.ptdump.space import Space

DEFAULT_MAX_SNAPSHOTS = 400
DEFAULT_READ_BUDGET = 30_000  # tables read for snapshots other than phases, CR3 writes and the end
FINAL_MAX_TABLES = 1 << 15  # the end of the run gets the ptdump default; the moments before it less
SNAPSHOT_MAX_TABLES = 2048
_ALWAYS = (PhaseEntered, RunEnded)
_SNAP = (FaultRaised, HandlerOutcome, PoolReset, DirectMapRange, Note)


@dataclass
class BootRecorder:
    """Pass ``attach`` as ``boot(pv=…)`` and ``on_event`` as a listener."""

    store: DagStore = field(default_factory=DagStore)
    max_snapshots: int = DEFAULT_MAX_SNAPSHOTS
    read_budget: int = DEFAULT_READ_BUDGET
    views: list[dict[str, Any]] = field(default_factory=list)
    modes: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0
    ctx: KernelContext | None = None

    def attach(self, ctx: KernelContext) -> PvOps:
        self.ctx = ctx
        return ctx.pv

    def on_event(self, e: Event) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        key = isinstance(e, _ALWAYS)
        if not key and not isinstance(e, _SNAP) and not (isinstance(e, CrWrite) and e.reg == "cr3"):
            return
        # phases and the end always; the rest (a livelock reloads CR3 thousands of times) within the bounds
        if not key and (len(self.views) >= self.max_snapshots or self.store.full
                        or self.store.reads >= self.read_budget):
            self.dropped += 1
            return
        self.snapshot(ctx, len(ctx.trace.events) - 1 if ctx.trace.enabled else -1,
                      FINAL_MAX_TABLES if isinstance(e, RunEnded) else SNAPSHOT_MAX_TABLES)

    def snapshot(self, ctx: KernelContext, event: int, max_tables: int = SNAPSHOT_MAX_TABLES) -> None:
        cpu = ctx.cpu
        regs, plan = cpu.regs, cpu.mmu.plan
        if plan.mode is PagingMode.DISABLED:
            return
        mem: PhysMem = ctx.platform.mem
        space = Space(mem, regs.cr0, regs.cr3, regs.cr4, regs.efer, plan, cpu.features)
        sem = space.semantics("arch")
        self.modes.setdefault(sem.mode.value, level_info(sem))
        cr3_root = space.root("arch")
        roots = [("CR3", cr3_root)]
        # The final tables are built in init_level4_pgt while CR3 still points at the early ones: show both.
        lay = ctx.layout
        init_pa = ctx.platform.entry.kernel_at + lay.init_pgt - lay.text
        if init_pa != cr3_root:
            roots.append((ctx.profile.init_pgt, init_pa))
        out = []
        for name, addr in roots:
            res = self.store.view(mem, sem, addr, max_tables=max_tables)
            out.append({"name": name, "addr": f"{addr:x}", "root": res.root, "tables": res.tables,
                        "capped": res.capped})
        self.views.append({"label": f"event {event}", "event": event, "cr3": f"{regs.cr3:x}", "mode": sem.mode.value,
                           "roots": out})
