"""The hypervisor's side of an x86-64 Xen PV boot report (``tools/boot_report.py`` loads it only for a Xen
run, so that Xen's event types stay out of every other boot): hypercalls, validations, pins and emulated
page-table stores counted from the event stream, and one line per such event."""

from __future__ import annotations

from typing import Any

from earlymm.hw.events import Event
from earlymm.kernel.boot import BootResult
from earlymm.platform.xen.events import Hypercall, PtwrEmulated, TablePinned, TableValidated, XenConsole

XEN_COUNTED: tuple[type[Event], ...] = (Hypercall, TableValidated, TablePinned, PtwrEmulated)


def xen_stats(r: BootResult) -> dict[str, Any]:
    """Counted from the event stream: hypercalls by name (a run of single calls counts each), tables
    validated by level, pins, emulated page-table stores; and the hypervisor's console."""
    calls: dict[str, int] = {}
    validated: dict[str, int] = {}
    pins = unpins = ptwr = 0
    for e in r.ctx.trace.events:
        if isinstance(e, Hypercall):
            calls[e.name] = calls.get(e.name, 0) + e.calls
        elif isinstance(e, TableValidated):
            validated[f"L{e.level}"] = validated.get(f"L{e.level}", 0) + 1
        elif isinstance(e, TablePinned):
            pins, unpins = pins + e.pinned, unpins + (not e.pinned)
        elif isinstance(e, PtwrEmulated):
            ptwr += 1
    xen = r.ctx.platform.xen  # type: ignore[attr-defined]
    return {"hypercalls": calls, "tables_validated": validated, "pins": pins, "unpins": unpins,
            "ptwr_emulations": ptwr, "console": list(xen.console), "domid": xen.ident.domid,
            "version": xen.ident.version}


def describe_xen(e: Event) -> str | None:
    """The hypervisor's side of a Xen PV boot: its console, hypercalls, validations, pins, emulations."""
    if isinstance(e, XenConsole):
        return f"   {e.text}"
    if isinstance(e, Hypercall):
        many = f" ×{e.calls}" if e.calls > 1 else ""
        return f"   hypercall {e.name}{many}: {e.detail}" + (f" → rc {e.rc}" if e.rc else "")
    if isinstance(e, TableValidated):
        return f"     Xen validated mfn {e.mfn:#x} (pfn {e.pfn:#x}) as an L{e.level} table ({e.entries} entries)"
    if isinstance(e, TablePinned):
        return f"     Xen {'pinned' if e.pinned else 'unpinned'} the L{e.level} table mfn {e.mfn:#x} (pfn {e.pfn:#x})"
    if isinstance(e, PtwrEmulated):
        return f"     Xen emulated the store {e.va:#x} ← {e.value:#x} into L1 mfn {e.mfn:#x}[{e.index}]"
    return None
