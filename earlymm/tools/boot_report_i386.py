"""Renderers for an i386 boot run (``kernel/i386/boot.py``): the timeline, the paravirt hooks' work entry by
entry, the table pages allocated and kept, the figures, the checks, JSON; and the machine as a 32-bit
QEMU-format core. Pure functions over an ``I386BootResult``; the conventions are the x86-64 report's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from earlymm.hw.events import Event, FaultRaised
from earlymm.hw.memory import ZERO_FRAME, Buffer
from earlymm.images import CpuState, write_qemu_core
from earlymm.images.cpustate import Segment
from earlymm.images.minimize import table_pfns_legacy
from earlymm.kernel.i386.boot import I386BootResult
from earlymm.kernel.i386.consts import BOOT_CS, BOOT_DS, KERNEL_CS, KERNEL_DS, USER_DS
from earlymm.kernel.i386.events import BootmemAlloc, EntryStore, LeafRun, LiveEntryChanged, PvNotify, TablePage
from earlymm.platform.xen.domain32 import FLAT_RING1_DS, Xen32PvPlatform
from earlymm.platform.xen.events import Hypercall, PtwrEmulated, TablePinned, TableValidated
from earlymm.tools.boot_report import describe as describe_common
from earlymm.tools.boot_report import fold_repeats, timeline_of

HOOKS = ("native_pagetable_setup_start", "native_pagetable_setup_done")
COUNTED: tuple[type[Event], ...] = (FaultRaised, LeafRun, TablePage, LiveEntryChanged, BootmemAlloc, PvNotify,
                                    EntryStore, Hypercall, TableValidated, PtwrEmulated)


def _hook_of(fn: str) -> str | None:
    """"pagetable_setup_start" for any backend's start hook (``native_pagetable_setup_start`` …)."""
    for hook in ("pagetable_setup_start", "pagetable_setup_done"):
        if fn.endswith(hook):
            return hook
    return None


def describe(e: Event) -> str | None:
    """One line for the i386 events; the shared events as the x86-64 timeline shows them."""
    if isinstance(e, EntryStore):
        return f"   {e.fn}: {e.op} [{e.table:#x}][{e.index}] {e.old:#x} -> {e.new:#x}"
    if isinstance(e, LiveEntryChanged):
        return f"     the CPU's live PDE {e.index}: {e.old:#x} -> {e.new:#x} ({e.fn})"
    if isinstance(e, LeafRun):
        return (f"   {e.fn}: {e.count} {e.level} leaves at [{e.table:#x}][{e.index}..{e.index + e.count - 1}], first "
                f"{e.entry:#x} ({e.present} were present)")
    if isinstance(e, TablePage):
        return f"     {e.fn}: {e.level} page {e.pa:#x} {e.action} for {e.va:#x}"
    if isinstance(e, PvNotify):
        return f"     {e.fn}: paravirt_{e.op}(pfn {e.pfn:#x})"
    if isinstance(e, BootmemAlloc):
        return f"     bootmem page {e.pa:#x} for {e.purpose}"
    return describe_common(e)


def _events(r: I386BootResult) -> list[Event]:
    return r.ctx.trace.events


def hooks(r: I386BootResult) -> dict[str, Any]:
    """Per hook: the backend, its entry stores, its notifications, and the live directory entries it changed."""
    out: dict[str, Any] = {h: {"backend": r.ctx.pv.init.name, "stores": [], "notifications": [], "live_pdes": []}
                           for h in ("pagetable_setup_start", "pagetable_setup_done")}
    for e in _events(r):
        hook = _hook_of(getattr(e, "fn", ""))
        if hook is None:
            continue
        if isinstance(e, EntryStore):
            out[hook]["stores"].append({"op": e.op, "table": f"{e.table:#x}", "index": e.index, "old": f"{e.old:#x}",
                                        "new": f"{e.new:#x}"})
        elif isinstance(e, PvNotify):
            out[hook]["notifications"].append({"op": e.op, "pfn": f"{e.pfn:#x}"})
        elif isinstance(e, LiveEntryChanged):
            out[hook]["live_pdes"].append({"pde": e.index, "old": f"{e.old:#x}", "new": f"{e.new:#x}"})
    return out


def stats(r: I386BootResult) -> dict[str, Any]:
    ctx, s, mm = r.ctx, r.ctx.stats, r.ctx.mm
    return {
        "page_faults": s.faults.get(14, 0),
        "other_exceptions": {str(k): v for k, v in s.faults.items() if k != 14},
        "table_pages_allocated": dict(sorted(s.pages_allocated.items())),
        "table_pages_kept": dict(sorted(s.pages_kept.items())),
        "leaves_written": s.leaves_written,
        "leaves_present_before": s.leaves_were_present,
        "entry_stores": s.entry_stores,
        "live_pdes_changed": s.live_entries_changed,
        "bootmem_pages": s.bootmem_pages,
        "max_pfn": f"{mm.max_pfn:#x}", "max_low_pfn": f"{mm.max_low_pfn:#x}",
        "highmem_pages": mm.highend_pfn - mm.highstart_pfn,
        "tlb": {"hits": ctx.cpu.mmu.tlb.stats.hits, "misses": ctx.cpu.mmu.tlb.stats.misses,
                "flushes": ctx.cpu.mmu.tlb.stats.flushes},
        "memory_pages_touched": len(ctx.platform.mem.frames),
    }


def xen_stats(r: I386BootResult) -> dict[str, Any] | None:
    """Under Xen: hypercalls by name (a run of single calls counts each), tables validated by level, pins,
    emulated page-table stores, the top-level tables and the hypervisor's console; None natively."""
    plat = r.ctx.platform
    if not isinstance(plat, Xen32PvPlatform):
        return None
    calls: dict[str, int] = {}
    validated: dict[str, int] = {}
    pins = ptwr = 0
    for e in _events(r):
        if isinstance(e, Hypercall):
            calls[e.name] = calls.get(e.name, 0) + e.calls
        elif isinstance(e, TableValidated):
            validated[f"L{e.level}"] = validated.get(f"L{e.level}", 0) + 1
        elif isinstance(e, TablePinned):
            pins += e.pinned
        elif isinstance(e, PtwrEmulated):
            ptwr += 1
    xen, ctx = plat.xen, r.ctx
    swapper = int(plat.p2m[ctx.pa_symbol("swapper_pg_dir") >> 12])
    return {"addresses": "machine", "version": xen.ident.version, "build": xen.build.name, "domid": xen.ident.domid,
            "hypervisor_virt_start": f"{xen.build.hypervisor_virt_start:#x}", "hypercalls": dict(sorted(calls.items())),
            "tables_validated": dict(sorted(validated.items())), "pins": pins, "ptwr_emulations": ptwr,
            "base_pointer_mfn": f"{xen.kernel_root:#x}", "swapper_pg_dir_mfn": f"{swapper:#x}",
            "swapper_pg_dir_pinned": xen.types.info(swapper).pinned,
            "builder_tables": {f"L{lvl}": [f"{int(plat.p2m[p]):#x}" for p in pfns]
                               for lvl, pfns in sorted(plat.sod.tables.items(), reverse=True)},
            "console": list(xen.console)}


def machine_state(r: I386BootResult) -> dict[str, Any]:
    regs, lay = r.ctx.cpu.regs, r.ctx.layout
    return {"cr0": f"{regs.cr0:#x}", "cr3": f"{regs.cr3:#x}", "cr4": f"{regs.cr4:#x}", "efer": f"{regs.efer:#x}",
            "pdptes": [f"{e:#x}" for e in regs.pdptes], "paging": r.ctx.cpu.mmu.mode.value,
            "swapper_pg_dir": f"{lay.phys('swapper_pg_dir'):#x}",
            "symbols": {n: f"{lay[n]:#x}" for n in ("_text", "__init_end", "swapper_pg_dir", "empty_zero_page",
                                                    "pg0", "_end", "boot_params", "idt_table")},
            "kmap_pte": f"{r.ctx.mm.kmap_pte:#x}", "pkmap_page_table": f"{r.ctx.mm.pkmap_page_table:#x}"}


def to_json(r: I386BootResult, *, events: bool) -> dict[str, Any]:
    ctx = r.ctx
    out: dict[str, Any] = {
        "outcome": r.outcome.value, "reason": r.reason, "phase": r.phase, "completed": r.completed,
        "arch": "i386", "paging": "pae" if ctx.pae else "2-level", "pv": ctx.config.pv,
        "profile": ctx.profile.name, "source_ref": ctx.profile.source_ref,
        "kernel_at": f"{ctx.platform.entry.kernel_at:#x}", "ramdisk_at": f"{ctx.platform.entry.ramdisk_at:#x}",
        "stats": stats(r), "machine_state": machine_state(r), "hooks": hooks(r),
        "table_pages": [{"fn": e.fn, "level": e.level, "action": e.action, "pa": f"{e.pa:#x}", "va": f"{e.va:#x}"}
                        for e in _events(r) if isinstance(e, TablePage)],
        "invariants": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks],
        "console": ctx.console,
    }
    x = xen_stats(r)
    if x is not None:
        out["xen"] = x
    if events:
        out["events"] = [e.to_json() for e in ctx.trace.events]
    return out


def _hook_lines(r: I386BootResult) -> list[str]:
    out = []
    for hook, doc in hooks(r).items():
        what = [f"{s['op']} [{s['table']}][{s['index']}] {s['old']} -> {s['new']}" for s in doc["stores"]]
        what += [f"paravirt_{n['op']}(pfn {n['pfn']})" for n in doc["notifications"]]
        out.append(f"  {hook} ({doc['backend']}): " + ("; ".join(what) if what else "no stores"))
        if doc["live_pdes"]:
            out.append("    overwrote the CPU's live non-PAE PDEs " + ", ".join(
                f"{p['pde']} ({p['old']} -> {p['new']})" for p in doc["live_pdes"]))
    return out


def render_text(r: I386BootResult, *, trace: bool) -> str:
    ctx = r.ctx
    entry = ctx.platform.entry
    ram = sum(x.end - x.start for x in ctx.platform.ram())
    x = xen_stats(r)
    if x is not None:
        out = [f"earlymm boot: Linux {ctx.profile.name} i386 {'PAE' if ctx.pae else '2-level'} with 2.6.23's Xen guest "
               f"hooks, a PV domU (domain {x['domid']} on Xen {x['version']} {x['build']}), {ram >> 20} MiB, kernel at "
               f"pfn {entry.kernel_at >> 12:#x}; table addresses and entries are machine addresses", ""]
    else:
        out = [f"earlymm boot: Linux {ctx.profile.name} i386 {'PAE' if ctx.pae else '2-level'} (pv {ctx.config.pv}), "
               f"{ram >> 20} MiB RAM, kernel at {entry.kernel_at:#x}, ramdisk at {entry.ramdisk_at:#x}+"
               f"{entry.ramdisk_size:#x}", ""]
    if trace:
        out += [f"{i:6d} {e.kind}: " + ", ".join(f"{k}={v}" for k, v in e.to_json().items() if k != "event")
                for i, e in enumerate(ctx.trace.events)]
    else:
        out += fold_repeats(timeline_of(ctx.trace.events, describe, COUNTED))
    if r.console:
        out += ["", "console:"] + ["  " + line for line in r.console.splitlines()]
    s = stats(r)
    alloc, kept = s["table_pages_allocated"], s["table_pages_kept"]
    out += ["", f"outcome: {r.outcome.value} in {r.phase} — {r.reason}", "",
            f"page faults {s['page_faults']}; table pages allocated "
            f"{', '.join(f'{k} {v}' for k, v in alloc.items()) or 'none'}, kept "
            f"{', '.join(f'{k} {v}' for k, v in kept.items()) or 'none'}; leaves written {s['leaves_written']} "
            f"({s['leaves_present_before']} were present); live PDEs changed {s['live_pdes_changed']}; "
            f"max_low_pfn {s['max_low_pfn']}"]
    if x is not None:
        if x["console"]:
            out += ["", "Xen console:"] + ["  " + line for line in x["console"]]
        out += ["", "hypercalls: " + ", ".join(f"{k} {v}" for k, v in x["hypercalls"].items())
                + f"; tables validated {', '.join(f'{k} {v}' for k, v in x['tables_validated'].items())}"
                + f"; pins {x['pins']}; emulated page-table stores {x['ptwr_emulations']}; swapper_pg_dir mfn "
                + f"{x['swapper_pg_dir_mfn']} {'pinned' if x['swapper_pg_dir_pinned'] else 'not pinned'}"]
    out += ["", "paravirt hooks:", *_hook_lines(r), "", "checks:"]
    for c in r.checks:
        out.append(f"  [{'pass' if c.ok else 'FAIL'}] {c.name}" + (f" — {c.detail}" if c.detail and not c.ok else ""))
    return "\n".join(out)


def _segments(cs: int, idt_base: int, idt_limit: int) -> tuple[Segment, ...]:
    """QEMU's segment caches for the flat segments head.S leaves (descriptor bits 8..23 of the high dword,
    accessed bit set): 4 GiB code/data, 32-bit (D/B), DPL 0 — DS/ES the user data segment after head.S's
    reload, the boot segments before it."""
    kernel = cs == KERNEL_CS
    code = Segment(cs, 0xFFFF_FFFF, 0x00CF_9B00, 0)
    data = Segment(USER_DS if kernel else BOOT_DS, 0xFFFF_FFFF, 0x00CF_F300 if kernel else 0x00CF_9300, 0)
    stack = Segment(KERNEL_DS if kernel else BOOT_DS, 0xFFFF_FFFF, 0x00CF_9300, 0)
    segs = [code, data, data, Segment(), Segment(), stack, Segment(), Segment(), Segment(),
            Segment(0, max(idt_limit, 0), 0, idt_base)]
    return tuple(segs)


def _xen_segments(cs: int) -> tuple[Segment, ...]:
    """A ring-1 PV kernel's flat segments: FLAT_RING1_CS / FLAT_RING1_DS (DPL 1), 4 GiB, 32-bit."""
    code = Segment(cs, 0xFFFF_FFFF, 0x00CF_BB00, 0)
    data = Segment(FLAT_RING1_DS, 0xFFFF_FFFF, 0x00CF_B300, 0)
    return (code, data, data, Segment(), Segment(), data, Segment(), Segment(), Segment(), Segment())


def save_core(r: I386BootResult, path: str | Path) -> None:
    """The machine as qemu-system-i386's ``dump-guest-memory`` writes it (EM_386, the i386 NT_PRSTATUS, the
    QEMU note): the pages the simulation wrote plus every table page the saved CR3 reaches, marked complete
    (``absent_zero``). Under Xen the core is the host's machine memory: CR3 and every entry hold machine
    frames (the domain's pseudo-physical pfn of a machine frame is the m2p's, ``p2m`` the reverse).
    Raises ``WriteError``."""
    regs = r.ctx.cpu.regs
    xen = isinstance(r.ctx.platform, Xen32PvPlatform)
    cs = regs.cs if regs.cs in (BOOT_CS, KERNEL_CS) or xen else BOOT_CS
    gprs = [0] * 16
    gprs[6] = regs.rsp & 0xFFFF_FFFF
    cpu = CpuState(gprs=tuple(gprs), rip=regs.rip & 0xFFFF_FFFF, rflags=regs.rflags, cr0=regs.cr0, cr2=regs.cr2,
                   cr3=regs.cr3, cr4=regs.cr4, segments=_xen_segments(cs) if xen else
                   _segments(cs, regs.idt_base, regs.idt_limit))
    mem = r.ctx.platform.mem
    frames: dict[int, Buffer] = dict(mem.frames)
    frames.update((pfn, ZERO_FRAME) for pfn in table_pfns_legacy(mem, cpu)[0] if pfn not in frames)
    write_qemu_core(path, sorted(frames.items()), [cpu], absent_zero=True, machine="i386")
