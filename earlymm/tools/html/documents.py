"""The data behind a page: address spaces of an image (ptdump) or the story of a boot, as one JSON document.

Shapes (every address is a hex string without ``0x``; JavaScript reads them as BigInt):

* ``nodes``/``flags`` — the table DAG (``dag.DagStore``), shared by all views;
* ``modes`` — per paging mode, its levels (name, shift, entries, page size);
* ``views`` — one per address space (ptdump) or per snapshot (boot): ``root`` node, ``cr3``, ``mode``,
  ``markers`` (Linux region names: ``[[start, name], …]``);
* ``boot`` — for a boot: outcome, figures, invariants, the shown events, phases, pool use over time.
"""

from __future__ import annotations

from typing import Any

from earlymm.hw.events import CrWrite, Event, FaultRaised, TlbFlush
from earlymm.kernel.boot import BootResult
from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.kernel.events import HandlerOutcome, PhaseEntered, PoolAlloc, PoolReset, RunEnded
from earlymm.tools.boot_report import describe, stats
from earlymm.tools.html.dag import DEFAULT_MAX_TABLES, DagStore, level_info
from earlymm.tools.html.snapshots import BootRecorder
from earlymm.tools.ptdump import regions
from earlymm.tools.ptdump.engine import expand
from earlymm.tools.ptdump.space import Space

MAX_EVENTS = 3000  # events listed in a boot's timeline (the pool series and phases use all of them)
LAYOUT_MAX_LEAVES = 1 << 20


def markers_of(layout: regions.Layout) -> list[list[str]]:
    return [[f"{m.start:x}", m.name] for m in layout.markers() if m.name is not None]


def ptdump_document(spaces: list[Space], label: str, *, max_tables: int = DEFAULT_MAX_TABLES) -> dict[str, Any]:
    """Every address space of an image: the DAG under each CR3 and, for x86-64, Linux's regions."""
    store = DagStore()
    modes: dict[str, Any] = {}
    views: list[dict[str, Any]] = []
    for space in spaces:
        sem = space.semantics("arch")
        modes.setdefault(sem.mode.value, level_info(sem))
        res = store.view(space.mem, sem, space.root("arch"), max_tables=max_tables)
        root = {"name": "CR3", "addr": f"{space.root('arch'):x}", "root": res.root, "tables": res.tables,
                "capped": res.capped}
        view: dict[str, Any] = {"label": f"cr3 {space.cr3:#x}", "cr3": f"{space.cr3:x}", "mode": sem.mode.value,
                                "roots": [root], "markers": []}
        if space.mode.is_ia32e:
            tree = space.tree("arch", max_tables=max_tables)
            layout = regions.detect(expand(tree, max_leaves=LAYOUT_MAX_LEAVES), [r.span for r in tree.sem.rows],
                                    len(tree.sem.rows) == 5)
            view["markers"] = markers_of(layout)
            view["layout_how"] = layout.how
        views.append(view)
    return {"kind": "ptdump", "title": f"earlymm ptdump {label}", "source": label, "modes": modes,
            "nodes": store.nodes, "flags": store.flag_names, "views": views}


def boot_markers(result: BootResult) -> list[list[str]]:
    """Region names of the modelled kernel's layout: v3.9's from spec §2.2 (Documentation/x86/x86_64/mm.txt
    @ v3.9), 6.x's defaults from ``ptdump.regions`` (spec §2.3)."""
    p = result.ctx.profile
    if p.name == "v3.9":
        rows = [(0, "User space (the identity map while booting)"), (0xFFFF_8000_0000_0000, "Guard hole (Xen)"),
                (p.page_offset, "Direct map (__PAGE_OFFSET)"), (p.page_offset + p.maxmem, "Hole"),
                (0xFFFF_C900_0000_0000, "vmalloc"), (0xFFFF_E900_0000_0000, "Hole"),
                (0xFFFF_EA00_0000_0000, "Vmemmap"), (0xFFFF_EB00_0000_0000, "Hole"),
                (START_KERNEL_MAP, "Kernel text (__START_KERNEL_map)"),
                (START_KERNEL_MAP + p.kernel_image_size, "Modules"),
                (0xFFFF_FFFF_FF60_0000, "vsyscalls / fixmap")]
        return [[f"{a:x}", n] for a, n in rows]
    la57 = result.ctx.cpu.mmu.plan.mode.value == "5-level"
    d = regions.L5 if la57 else regions.L4
    layout = regions.Layout(la57, d.page_offset, d.vmalloc, d.vmalloc + d.vmalloc_size, d.vmemmap,
                            START_KERNEL_MAP + p.kernel_image_size, regions.FIXADDR_TOP - (regions.FIX_SLOTS_6_1 << 12))
    return markers_of(layout)


def _event_row(i: int, e: Event, text: str) -> list[Any]:
    addr = ""
    if isinstance(e, FaultRaised):
        addr = f"{e.cr2:x}"
    elif isinstance(e, CrWrite):
        addr = f"{e.new:x}"
    elif isinstance(e, PoolAlloc):
        addr = f"{e.va:x}"
    return [i, e.kind, text.strip(), addr, getattr(e, "reg", "") or getattr(e, "vector", "")]


def timeline(result: BootResult) -> dict[str, Any]:
    """Shown events, phases, CR3 switches, #PFs and pool use, from the run's event stream."""
    events = result.ctx.trace.events
    shown: list[list[Any]] = []
    omitted = 0
    phases: list[list[Any]] = []
    pool: list[list[int]] = [[0, 0]]
    for i, e in enumerate(events):
        if isinstance(e, PhaseEntered):
            phases.append([i, e.phase])
            if e.phase == "startup_64":
                pool.append([i, result.ctx.profile.next_early_pgt_initial])
        elif isinstance(e, PoolAlloc):
            pool.append([i, e.index + 1])
        elif isinstance(e, PoolReset):
            pool += [[i, e.used], [i, 0]]
        if isinstance(e, TlbFlush):
            continue
        text = describe(e)
        if isinstance(e, HandlerOutcome) and text is None:  # the summary leaves these out; a click needs them
            text = f"early handler: {e.outcome} {e.cr2:#x}"
        if text is None:
            continue
        if len(shown) < MAX_EVENTS or isinstance(e, PhaseEntered | RunEnded):
            shown.append(_event_row(i, e, text))
        else:
            omitted += 1
    return {"events": shown, "omitted": omitted, "total": len(events), "phases": phases, "pool": thin(pool)}


def thin(series: list[list[int]], buckets: int = 2000) -> list[list[int]]:
    """A step series cut to about ``2 * buckets`` points: per bucket of event indices, the points where it is
    lowest and highest, in order (a pool reset thousands of times still shows its range; the chart is about
    1,000 pixels wide)."""
    if len(series) <= 2 * buckets:
        return series
    width = (series[-1][0] - series[0][0]) // buckets + 1
    out: list[list[int]] = []
    group: list[list[int]] = []
    for point in series:
        if group and point[0] // width != group[0][0] // width:
            out += _extremes(group)
            group = []
        group.append(point)
    return out + _extremes(group)


def _extremes(group: list[list[int]]) -> list[list[int]]:
    lo = min(range(len(group)), key=lambda i: group[i][1])
    hi = max(range(len(group)), key=lambda i: group[i][1])
    return [group[i] for i in sorted({0, lo, hi, len(group) - 1})]


def boot_document(result: BootResult, recorder: BootRecorder) -> dict[str, Any]:
    ctx = result.ctx
    entry = ctx.platform.entry
    ram = sum(x.end - x.start for x in ctx.platform.ram())
    views = recorder.views
    boot = {
        "outcome": result.outcome.value, "crashed": result.outcome.crashed, "reason": result.reason,
        "phase": result.phase, "profile": ctx.profile.name, "variant": ctx.config.variant.value,
        "pool_size": ctx.config.pool_pages, "ram": f"{ram:x}", "kernel_at": f"{entry.kernel_at:x}",
        "stats": stats(result), "invariants": [[c.name, c.ok, c.detail] for c in result.observer.final()],
        "console": ctx.console, "snapshots_dropped": recorder.dropped, **timeline(result),
    }
    source = (f"Linux {ctx.profile.name} x86-64 ({ctx.config.variant.value} early #PF handler, pool "
              f"{ctx.config.pool_pages}), {ram >> 20} MiB RAM, kernel at {entry.kernel_at:#x}, ramdisk at "
              f"{entry.ramdisk_at:#x}+{entry.ramdisk_size:#x}")
    return {"kind": "boot", "title": f"earlymm boot: {result.outcome.value}", "source": source,
            "modes": recorder.modes, "nodes": recorder.store.nodes, "flags": recorder.store.flag_names,
            "views": views, "markers": boot_markers(result), "boot": boot}
