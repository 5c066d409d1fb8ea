"""Renderers for a boot run: the timeline summary, the figures, the invariants, JSON; and saving the
simulated machine as a QEMU-format core. Pure functions over a ``BootResult``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from earlymm.hw.events import CrWrite, Event, FaultRaised, TlbFlush
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

CRASH_OUTCOMES = ("panic", "halt", "hang", "oops", "triple_fault", "livelock", "fault")


def stats(r: BootResult) -> dict[str, Any]:
    ctx = r.ctx
    s = ctx.stats
    out: dict[str, Any] = {
        "page_faults": ctx.cpu.fault_counts.get(14, 0),
        "other_exceptions": {str(k): v for k, v in ctx.cpu.fault_counts.items() if k != 14},
        "pool_size": ctx.config.pool_pages,
        "pool_allocations": s.pool_allocs,
        "pool_resets": s.pool_resets,
        "pool_high_water": s.pool_high_water,
        "early_handler_calls": s.handler_calls,
        "early_mappings": s.handler_mapped,
        "early_declined": s.handler_declined,
        "tlb": {"hits": ctx.cpu.mmu.tlb.stats.hits, "misses": ctx.cpu.mmu.tlb.stats.misses,
                "flushes": ctx.cpu.mmu.tlb.stats.flushes},
        "memory_pages_touched": len(ctx.machine.mem.frames),
    }
    if ctx.mm is not None and "init_mem_mapping" in r.completed:
        mm = ctx.mm
        out["final_table_pages"] = table_pages_by_level(ctx)
        out["direct_map_leaves"] = {"4K": mm.pages_4k, "2M": mm.pages_2m, "1G": mm.pages_1g}
        out["low_pages"] = {"brk": s.low_pages_brk, "memblock": s.low_pages_memblock}
        out["max_pfn_mapped"] = f"{mm.max_pfn_mapped:#x}"
    return out


def to_json(r: BootResult, *, events: bool) -> dict[str, Any]:
    ctx = r.ctx
    out: dict[str, Any] = {
        "outcome": r.outcome, "reason": r.reason, "phase": r.phase, "completed": r.completed,
        "profile": ctx.profile.name, "source_ref": ctx.profile.source_ref, "variant": ctx.config.variant.value,
        "kernel_at": f"{ctx.machine.config.kernel_at:#x}", "ramdisk_at": f"{ctx.machine.ramdisk_at:#x}",
        "stats": stats(r),
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
        return f"   {e.reg} {e.old:#x} -> {e.new:#x}"
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
    if isinstance(e, TlbFlush):
        return None
    return None


def timeline(r: BootResult, *, limit: int = 40) -> list[str]:
    """The story, compressed: every phase, note and CR write; faults and pool events up to ``limit``
    per phase (the rest counted)."""
    lines: list[str] = []
    shown = skipped = 0
    for e in r.ctx.trace.events:
        text = describe(e)
        if text is None:
            continue
        if isinstance(e, PhaseEntered):
            if skipped:
                lines.append(f"     … {skipped} more fault/pool/table events")
            shown = skipped = 0
        elif isinstance(e, FaultRaised | PoolAlloc | EarlyMapping | HandlerOutcome | LowPageAlloc | PoolReset):
            shown += 1
            if shown > limit:
                skipped += 1
                continue
        lines.append(text)
    if skipped:
        lines.append(f"     … {skipped} more fault/pool/table events")
    return lines


def render_text(r: BootResult, *, trace: bool) -> str:
    ctx = r.ctx
    cfg = ctx.machine.config
    ram = sum(x.end - x.start for x in cfg.ram())
    out = [f"earlymm boot: Linux {ctx.profile.name} x86-64 ({ctx.config.variant.value} early #PF handler, "
           f"pool {ctx.config.pool_pages}), {ram >> 20} MiB RAM, kernel at {cfg.kernel_at:#x}, "
           f"ramdisk at {ctx.machine.ramdisk_at:#x}+{cfg.ramdisk_size:#x}", ""]
    if trace:
        out += [f"{i:6d} {e.kind}: " + ", ".join(f"{k}={v}" for k, v in e.to_json().items() if k != "event")
                for i, e in enumerate(ctx.trace.events)]
    else:
        out += timeline(r)
    if r.console:
        out += ["", "console:"] + ["  " + line for line in r.console.splitlines()]
    s = stats(r)
    out += ["", f"outcome: {r.outcome} in {r.phase} — {r.reason}", "",
            f"page faults {s['page_faults']}, early mappings {s['early_mappings']}, declined {s['early_declined']}, "
            f"pool allocations {s['pool_allocations']}, pool resets {s['pool_resets']}, "
            f"pool high-water {s['pool_high_water']}/{s['pool_size']}"]
    if "final_table_pages" in s:
        t, d = s["final_table_pages"], s["direct_map_leaves"]
        out.append(f"final page tables: pgd {t['pgd']}, pud {t['pud']}, pmd {t['pmd']}, pte {t['pte']} pages; "
                   f"direct map leaves 4K {d['4K']}, 2M {d['2M']}, 1G {d['1G']}; "
                   f"table pages from brk {s['low_pages']['brk']}, memblock {s['low_pages']['memblock']}")
    out.append("")
    out.append("invariants (spec §3.11):")
    for c in r.observer.final():
        out.append(f"  [{'pass' if c.ok else 'FAIL'}] {c.name}" + (f" — {c.detail}" if c.detail and not c.ok else ""))
    return "\n".join(out)


def save_core(r: BootResult, path: str | Path) -> None:
    """The machine's written physical memory and the CPU's registers as a QEMU ``dump-guest-memory``
    core (sparse: only pages the simulation wrote; read it with ``--absent zero``)."""
    from earlymm.images import CpuState, Segment, write_qemu_core  # only --save-core needs the images layer

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
    mem = ctx.machine.mem
    write_qemu_core(path, ((pfn, mem.frames[pfn]) for pfn in sorted(mem.frames)), [cpu])
