"""Renderers for a boot run: the timeline summary, the figures, the invariants, JSON; and saving the
simulated machine as a QEMU-format core. Pure functions over a ``BootResult``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from earlymm.hw.events import CrWrite, Event, FaultRaised, ModeChange, TlbFlush
from earlymm.hw.memory import ZERO_FRAME, Buffer
from earlymm.kernel.boot import BootResult
from earlymm.kernel.events import (
    ConsoleLine,
    DirectMapRange,
    EarlyMapping,
    HandlerOutcome,
    LowPageAlloc,
    Note,
    PhaseEntered,
    PoolAlloc,
    PoolReset,
    RunEnded,
)
from earlymm.kernel.invariants import table_pages_by_level

if TYPE_CHECKING:
    from pathlib import Path


def stats(r: BootResult) -> dict[str, Any]:
    ctx = r.ctx
    s = ctx.stats
    out: dict[str, Any] = {
        "page_faults": ctx.stats.faults.get(14, 0),
        "other_exceptions": {str(k): v for k, v in ctx.stats.faults.items() if k != 14},
        "pool_size": ctx.config.pool_pages,
        "pool_allocations": s.pool_allocs,
        "pool_resets": s.pool_resets,
        "pool_high_water": s.pool_high_water,
        "early_handler_calls": s.handler_calls,
        "early_mappings": s.handler_mapped,
        "early_declined": s.handler_declined,
        "tlb": {"hits": ctx.cpu.mmu.tlb.stats.hits, "misses": ctx.cpu.mmu.tlb.stats.misses,
                "flushes": ctx.cpu.mmu.tlb.stats.flushes},
        "memory_pages_touched": len(ctx.platform.mem.frames),
    }
    if getattr(ctx.platform, "xen", None) is not None:
        from earlymm.tools.boot_report_xen import xen_stats  # the hypervisor's report only for a Xen run

        out["xen"] = xen_stats(r)
    if ctx.mm is not None and "init_mem_mapping" in r.completed:
        mm = ctx.mm
        out["final_table_pages"] = table_pages_by_level(ctx)
        out["direct_map_leaves"] = {"4K": mm.pages_4k, "2M": mm.pages_2m, "1G": mm.pages_1g}
        out["low_pages"] = {"brk": s.low_pages_brk, "memblock": s.low_pages_memblock}
        out["max_pfn_mapped"] = f"{mm.max_pfn_mapped:#x}"
    return out


def kernel_var(r: BootResult, name: str, size: int = 8) -> int:
    """A kernel variable read physically where the loader put the image (no MMU, so never a fault)."""
    lay = r.ctx.layout
    pa = r.ctx.platform.entry.kernel_at + lay[name] - lay.text
    p2m = getattr(r.ctx.platform, "p2m", None)
    if p2m is not None:  # a Xen PV domain: the image's pseudo-physical page lives in the p2m's machine frame
        pa = (int(p2m[pa >> 12]) << 12) | (pa & 0xFFF)
    return r.ctx.platform.mem.read_int(pa, size)


def machine_state(r: BootResult) -> dict[str, Any]:
    """Registers and the early-boot variables at the end of the run, for comparing with a real kernel
    stopped at the same point (``earlymm.tools.midboot``). The core ``--save-core`` writes has no EFER."""
    regs, lay, at = r.ctx.cpu.regs, r.ctx.layout, r.ctx.platform.entry.kernel_at
    return {"cr0": f"{regs.cr0:#x}", "cr3": f"{regs.cr3:#x}", "cr4": f"{regs.cr4:#x}", "efer": f"{regs.efer:#x}",
            "early_top_pgt": f"{at + lay.top_pgt - lay.text:#x}", "init_top_pgt": f"{at + lay.init_pgt - lay.text:#x}",
            "symbols": {n: f"{lay[n]:#x}" for n in ("early_top_pgt", "early_dynamic_pgts", "init_top_pgt",
                                                    "level3_kernel_pgt", "level2_kernel_pgt", "level2_fixmap_pgt",
                                                    "level1_fixmap_pgt", "bm_pte", "__brk_base", "__brk_limit")},
            "next_early_pgt": f"{kernel_var(r, 'next_early_pgt', 4):#x}",
            "phys_base": f"{kernel_var(r, 'phys_base'):#x}"}


def to_json(r: BootResult, *, events: bool) -> dict[str, Any]:
    ctx = r.ctx
    out: dict[str, Any] = {
        "outcome": r.outcome.value, "reason": r.reason, "phase": r.phase, "completed": r.completed,
        "profile": ctx.profile.name, "source_ref": ctx.profile.source_ref, "variant": ctx.config.variant.value,
        "kernel_at": f"{ctx.platform.entry.kernel_at:#x}", "ramdisk_at": f"{ctx.platform.entry.ramdisk_at:#x}",
        "stats": stats(r), "machine_state": machine_state(r),
        "invariants": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in r.observer.final()],
        "console": ctx.console,
    }
    if events:
        out["events"] = [e.to_json() for e in ctx.trace.events]
    return out


def describe(e: Event) -> str | None:
    """One line for the interesting events (None for those the summary leaves out)."""
    if isinstance(e, PhaseEntered):
        return f"== {e.phase}"
    if isinstance(e, FaultRaised):
        return f"   #{'PF' if e.vector == 14 else e.vector} cr2={e.cr2:#x} error={e.error_code:#x} ({e.reason})" \
            + (f" [nested, depth {e.depth}]" if e.depth else "")
    if isinstance(e, PoolAlloc):
        return f"     pool page {e.index} ({e.phys:#x}) as a {e.level} table for {e.va:#x}"
    if isinstance(e, PoolReset):
        return (f"     reset_early_page_tables #{e.resets}: {e.used} pool pages reclaimed, PGD[0..510] zeroed, "
                "CR3 reloaded")
    if isinstance(e, EarlyMapping):
        return f"     mapped {e.va & ~0x1FFFFF:#x} with pmd {e.entry:#x}" + (f" (+{e.entries - 1} more)"
                                                                              if e.entries > 1 else "")
    if isinstance(e, HandlerOutcome) and e.outcome != "mapped":
        return f"     early handler: {e.outcome}"
    if isinstance(e, CrWrite):
        if e.old != e.new:
            return f"   {e.reg} {e.old:#x} -> {e.new:#x}"
        # Writing the same value changes nothing, except that a CR3 write flushes the TLB.
        return f"   {e.reg} reloaded ({e.new:#x}): non-global TLB entries flushed" if e.reg == "cr3" else None
    if isinstance(e, Note):
        return f"   {e.what}"
    if isinstance(e, RunEnded):
        return f"== {e.outcome}: {e.reason}"
    if isinstance(e, DirectMapRange):
        return f"   direct map [{e.start:#x}, {e.end:#x}) with {e.page_size} pages"
    if isinstance(e, ConsoleLine):
        return f"   console: {e.text}"
    if isinstance(e, LowPageAlloc):
        return f"     page-table page {e.pa:#x} from {e.source}"
    if isinstance(e, ModeChange):
        return f"   CPU now in {e.mode} mode"
    if isinstance(e, TlbFlush):
        return None
    if type(e).__module__.startswith("earlymm.platform.xen"):  # only a Xen run has them: load Xen's report then
        from earlymm.tools.boot_report_xen import describe_xen

        return describe_xen(e)
    return None


COUNTED: tuple[type[Event], ...] = (FaultRaised, PoolAlloc, EarlyMapping, HandlerOutcome, LowPageAlloc, PoolReset)


def timeline(r: BootResult, *, limit: int = 40) -> list[str]:
    """The story, compressed: every phase, note and CR write; faults, pool events (and under Xen
    hypercalls, validations, pins and emulations) up to ``limit`` per phase (the rest counted)."""
    counted = COUNTED
    if getattr(r.ctx.platform, "xen", None) is not None:
        from earlymm.tools.boot_report_xen import XEN_COUNTED

        counted += XEN_COUNTED
    return timeline_of(r.ctx.trace.events, describe, counted, limit=limit)


def timeline_of(events: list[Event], describe_fn: Callable[[Event], str | None], counted: tuple[type[Event], ...],
                *, limit: int = 40) -> list[str]:
    """``timeline`` over any boot path's events: ``describe_fn`` gives an event's line, ``counted`` the
    kinds limited to ``limit`` per phase."""
    lines: list[str] = []
    shown = skipped = 0
    for e in events:
        text = describe_fn(e)
        if text is None:
            continue
        if isinstance(e, PhaseEntered):
            if skipped:
                lines.append(f"     … {skipped} more fault/pool/table/hypercall events")
            shown = skipped = 0
        elif isinstance(e, counted):
            shown += 1
            if shown > limit:
                skipped += 1
                continue
        lines.append(text)
    if skipped:
        lines.append(f"     … {skipped} more fault/pool/table/hypercall events")
    return fold_repeats(lines)


_COUNTER = re.compile(r"#\d+")


def fold_repeats(lines: list[str], max_block: int = 6) -> list[str]:
    """Runs of a block of up to ``max_block`` lines repeated back to back, shown once with a count (a pool
    of one page resets thousands of times, each time the same three lines). Lines compare with their
    running counters (``#12``) blanked."""
    keys = [_COUNTER.sub("#", ln) for ln in lines]
    out: list[str] = []
    i = 0
    while i < len(lines):
        best_k, best_reps = 0, 1
        for k in range(1, max_block + 1):
            reps = 1
            while keys[i + reps * k:i + (reps + 1) * k] == keys[i:i + k] and i + (reps + 1) * k <= len(lines):
                reps += 1
            if reps > 1 and reps * k > best_reps * best_k:
                best_k, best_reps = k, reps
        if best_reps > 2:
            out += lines[i:i + best_k]
            n = "line" if best_k == 1 else f"{best_k} lines"
            out.append(f"     … the {n} above repeated {best_reps - 1} more times")
            i += best_k * best_reps
        else:
            out.append(lines[i])
            i += 1
    return out


def render_text(r: BootResult, *, trace: bool) -> str:
    ctx = r.ctx
    entry = ctx.platform.entry
    ram = sum(x.end - x.start for x in ctx.platform.ram())
    version = ctx.profile.source_ref.split(" (")[0]
    xen = getattr(ctx.platform, "xen", None)
    if xen is not None:
        out = [f"earlymm boot: Linux {ctx.profile.name} ({version}) x86-64 as a Xen PV domU (domain "
               f"{xen.ident.domid} on Xen {xen.ident.version}; write_cr3 starts as "
               f"{'xen_write_cr3, before the fix' if ctx.xen and ctx.xen.write_cr3_late else 'xen_write_cr3_init'}), "
               f"{ram >> 20} MiB, kernel at pfn {entry.kernel_at >> 12:#x}, machine frames shuffled", ""]
    else:
        out = [f"earlymm boot: Linux {ctx.profile.name} ({version}) x86-64 ({ctx.config.variant.value} early #PF "
               f"handler, pool {ctx.config.pool_pages}), {ram >> 20} MiB RAM, kernel at {entry.kernel_at:#x}, "
               f"ramdisk at {entry.ramdisk_at:#x}+{entry.ramdisk_size:#x}", ""]
    if trace:
        out += [f"{i:6d} {e.kind}: " + ", ".join(f"{k}={v}" for k, v in e.to_json().items() if k != "event")
                for i, e in enumerate(ctx.trace.events)]
    else:
        out += timeline(r)
    if r.console:
        out += ["", "console:"] + ["  " + line for line in r.console.splitlines()]
    s = stats(r)
    out += ["", f"outcome: {r.outcome.value} in {r.phase} — {r.reason}", ""]
    if "xen" in s:
        x = s["xen"]
        if x["console"]:
            out += ["Xen console:"] + ["  " + line for line in x["console"]] + [""]
        out.append("hypercalls: " + ", ".join(f"{k} {v}" for k, v in sorted(x["hypercalls"].items()))
                   + f"; tables validated {', '.join(f'{k} {v}' for k, v in sorted(x['tables_validated'].items()))}"
                   + f"; pins {x['pins']}, unpins {x['unpins']}, emulated page-table stores {x['ptwr_emulations']}")
    else:
        out.append(f"page faults {s['page_faults']}, early mappings {s['early_mappings']}, declined "
                   f"{s['early_declined']}, pool allocations {s['pool_allocations']}, pool resets {s['pool_resets']}, "
                   f"pool high-water {s['pool_high_water']}/{s['pool_size']}")
    if "final_table_pages" in s:
        t, d = s["final_table_pages"], s["direct_map_leaves"]
        out.append("final page tables: " + ", ".join(f"{k} {v}" for k, v in t.items()) + " pages; "
                   f"direct map leaves 4K {d['4K']}, 2M {d['2M']}, 1G {d['1G']}; "
                   f"table pages from brk {s['low_pages']['brk']}, memblock {s['low_pages']['memblock']}")
    out.append("")
    out.append("invariants (spec §5):" if xen is not None else "invariants (spec §3.11):")
    for c in r.observer.final():
        out.append(f"  [{'pass' if c.ok else 'FAIL'}] {c.name}" + (f" — {c.detail}" if c.detail and not c.ok else ""))
    return "\n".join(out)


def save_core(r: BootResult, path: str | Path) -> None:
    """The machine's written physical memory and the CPU's registers as a QEMU ``dump-guest-memory``
    core: the pages the simulation wrote, plus every page table the saved CR3 reaches (all-zero ones
    too, so other readers walk it fully), marked complete (``absent_zero``: the machine's untouched
    memory is zero, so earlymm reads the core with the default options). Raises ``WriteError``."""
    # only --save-core needs the images layer
    from earlymm.images import CpuState, write_qemu_core
    from earlymm.images.cpustate import Segment
    from earlymm.images.minimize import table_pfns

    ctx = r.ctx
    regs = ctx.cpu.regs
    segs = [Segment() for _ in range(10)]
    segs[0] = Segment(0x10, 0xFFFF_FFFF, (1 << 21 if regs.cs_l else 1 << 22) | 1 << 15 | 0xB << 8, 0)
    segs[5] = Segment(0x18, 0xFFFF_FFFF, 1 << 15 | 0x3 << 8, 0)
    segs[9] = Segment(0, regs.idt_limit if regs.idt_limit >= 0 else 0, 0, regs.idt_base)
    gprs = [0] * 16
    gprs[6] = regs.rsp
    cpu = CpuState(gprs=tuple(gprs), rip=regs.rip, rflags=regs.rflags, segments=tuple(segs), cr0=regs.cr0,
                   cr2=regs.cr2, cr3=regs.cr3, cr4=regs.cr4)
    mem = ctx.platform.mem
    frames: dict[int, Buffer] = dict(mem.frames)
    frames.update((pfn, ZERO_FRAME) for pfn in table_pfns(mem, cpu)[0] if pfn not in frames)
    write_qemu_core(path, sorted(frames.items()), [cpu], absent_zero=True)
