"""The tables of a boot at the moments that matter, recorded as it runs, over the kernel's public API.

``boot()`` hands its context to a ``pv`` factory and every event to its listeners; ``BootRecorder``
uses the first only to learn the context (it returns the native ``pv_ops`` unchanged, so the boot runs
exactly as without it) and the second to read the tables from ``ctx.platform.mem`` when an event worth
a picture passes: a phase, a CR3 write, a #PF raised and handled, a pool reset, a direct-map range,
the end of the run. Reading goes straight to the frames — no MMU access, no A/D update, no TLB fill —
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
_ALWAYS = (PhaseEntered, RunEnded)
_SNAP = (FaultRaised, HandlerOutcome, PoolReset, DirectMapRange, Note)


@dataclass
class BootRecorder:
    """Pass ``attach`` as ``boot(pv=…)`` and ``on_event`` as a listener."""

    store: DagStore = field(default_factory=DagStore)
    max_snapshots: int = DEFAULT_MAX_SNAPSHOTS
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
        key = isinstance(e, _ALWAYS) or (isinstance(e, CrWrite) and e.reg == "cr3")
        if not key and not isinstance(e, _SNAP):
            return
        if not key and (len(self.views) >= self.max_snapshots or self.store.full):
            self.dropped += 1
            return
        self.snapshot(ctx, len(ctx.trace.events) - 1 if ctx.trace.enabled else -1)

    def snapshot(self, ctx: KernelContext, event: int) -> None:
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
            res = self.store.view(mem, sem, addr)
            out.append({"name": name, "addr": f"{addr:x}", "root": res.root, "tables": res.tables,
                        "capped": res.capped})
        self.views.append({"label": f"event {event}", "event": event, "cr3": f"{regs.cr3:x}", "mode": sem.mode.value,
                           "roots": out})
