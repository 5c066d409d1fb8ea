"""The i386 boot path of 2.6.21 as a sequence of phases: loader → ``startup_32`` → ``setup_arch`` (up to
``paging_init``) → ``pagetable_setup_start`` → the rest of ``pagetable_init`` → ``paging_init``'s CR3/CR4
switch and ``kmap_init``. The path is the same for every paravirt backend: ``make_context`` binds one
(``BACKENDS``) and the kernel code only calls ``ctx.pv``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from earlymm.hw.events import Event, ListTrace
from earlymm.hw.faults import CpuException, Halt, SimulationError, describe
from earlymm.kernel.events import PhaseEntered, RunEnded
from earlymm.kernel.i386 import invariants as inv
from earlymm.kernel.i386 import invariants_xen as inv_xen
from earlymm.kernel.i386.consts import LOAD_PHYSICAL_ADDR, PAGE_OFFSET
from earlymm.kernel.i386.context import I386Config, I386Context
from earlymm.kernel.i386.head import startup_32
from earlymm.kernel.i386.init import paging_init
from earlymm.kernel.i386.layout import build_layout
from earlymm.kernel.i386.paravirt import native_pv_ops
from earlymm.kernel.i386.pvops import I386PvOps
from earlymm.kernel.i386.setup import setup_arch_early
from earlymm.kernel.i386.xen import xen_pv_ops, xen_start_kernel
from earlymm.kernel.invariants import Check
from earlymm.kernel.phases import BootOutcome, Phase
from earlymm.platform.base import EntryProtocol
from earlymm.platform.pc import MachineConfig
from earlymm.platform.pc32 import load_i386
from earlymm.platform.xen.domain32 import Domain32Config, Kernel32, create_domain32

BACKENDS: Mapping[str, Callable[[I386Context], I386PvOps]] = MappingProxyType({"native": native_pv_ops,
                                                                               "xen": xen_pv_ops})


@dataclass
class I386BootResult:
    outcome: BootOutcome
    reason: str
    phase: str
    ctx: I386Context
    checks: list[Check] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    console: str = ""


def make_context(machine: MachineConfig | Domain32Config, config: I386Config, *, trace: bool = False) -> I386Context:
    """The composition root of the i386 path: the image's layout, the platform — the PC after the 32-bit
    hand-over, or a 32-bit Xen PV domain at ``startup_xen`` (``Domain32Config``) — the kernel context, and
    the paravirt backend ``config.pv`` bound to it."""
    if isinstance(machine, Domain32Config):
        return _xen_context(machine, config, trace=trace)
    if machine.kernel_at != LOAD_PHYSICAL_ADDR:
        raise ValueError(f"the 2.6.21 i386 kernel runs where it was linked: it must be loaded at "
                         f"{LOAD_PHYSICAL_ADDR:#x}, not {machine.kernel_at:#x}")
    if config.pv not in BACKENDS:
        raise ValueError(f"no i386 paravirt backend {config.pv!r} (known: {', '.join(BACKENDS)})")
    layout = build_layout(config.image_size)
    events = ListTrace(enabled=trace, keep=64)
    events.emit(PhaseEntered("boot loader"))
    platform = load_i386(machine, layout.image_size, trace=events)
    ctx = I386Context(platform, layout, config)
    ctx.pv = BACKENDS[config.pv](ctx)
    return ctx


def _xen_context(dom: Domain32Config, config: I386Config, *, trace: bool) -> I386Context:
    if config.pv != "xen":
        raise ValueError("a Xen domain boots the i386 kernel with the Xen backend (pv xen)")
    layout = build_layout(config.image_size)
    events = ListTrace(enabled=trace, keep=64)
    events.emit(PhaseEntered("domain builder"))
    kernel = Kernel32(PAGE_OFFSET, layout["_text"], layout["_end"], layout["startup_32"], config.pae)
    platform = create_domain32(dom, kernel, events)
    ctx = I386Context(platform, layout, config)
    ctx.pv = BACKENDS[config.pv](ctx)
    return ctx


def boot(machine: MachineConfig | Domain32Config, config: I386Config, *, until: Phase | None = None,
         trace: bool = False, pv: Callable[[I386Context], I386PvOps] | None = None,
         listeners: Sequence[Callable[[Event], None]] = (),
         instrument: Callable[[I386Context], None] | None = None) -> I386BootResult:
    """Run the i386 path. ``pv`` replaces the configured backend (tests watch the seam with it);
    ``instrument`` is given the machine before the kernel's first instruction."""
    ctx = make_context(machine, config, trace=trace)
    ctx.trace.listeners.extend(listeners)
    if instrument is not None:
        instrument(ctx)
    if pv is not None:
        ctx.pv = pv(ctx)
    result = I386BootResult(BootOutcome.BOOTED, "reached the end of the modelled boot path", "", ctx)
    try:
        for phase in i386_boot_path(ctx, result.checks):
            result.completed.append(phase.value)
            if until is phase and phase is not Phase.END:
                result.outcome, result.reason = BootOutcome.STOPPED, f"stopped after {phase.value} (--until)"
                break
    except Halt as e:
        result.outcome, result.reason = BootOutcome(e.outcome), e.reason
    except SimulationError as e:
        result.outcome, result.reason = BootOutcome(e.outcome), e.reason
    except CpuException as e:
        result.outcome, result.reason = BootOutcome.FAULT, f"unhandled {describe(e.fault)}"
    result.phase = ctx.phase.value if ctx.phase is not None else ""
    result.console = "\n".join(ctx.console)
    ctx.emit(RunEnded(result.outcome.value, result.reason))
    return result


_NEXT = {Phase.PAGETABLE_SETUP_START: Phase.PAGETABLE_INIT, Phase.PAGETABLE_INIT: Phase.PAGING_INIT}


def i386_boot_path(ctx: I386Context, checks: list[Check]) -> Iterator[Phase]:
    """The i386 boot path; yields each ``Phase`` as it completes (the caller may stop there)."""
    entry = ctx.platform.entry
    if entry.protocol is EntryProtocol.XEN_PV_32:  # startup_xen: %esi = start_info
        ctx.enter_phase(Phase.XEN_START_KERNEL)
        xen_start_kernel(ctx, entry.boot_data)
        yield Phase.XEN_START_KERNEL
    else:
        ctx.enter_phase(Phase.STARTUP_32)
        startup_32(ctx, entry.boot_data)  # %esi: the real-mode data
        checks.extend(inv.after_startup_32(ctx))
        yield Phase.STARTUP_32
    ctx.enter_phase(Phase.SETUP_ARCH)
    setup_arch_early(ctx)
    yield Phase.SETUP_ARCH
    ctx.enter_phase(Phase.PAGETABLE_SETUP_START)
    for done in paging_init(ctx):
        if done is Phase.PAGING_INIT:
            checks.extend(inv_xen.at_end(ctx) if entry.protocol is EntryProtocol.XEN_PV_32 else inv.at_end(ctx))
        yield done
        if done in _NEXT:
            ctx.enter_phase(_NEXT[done])
    ctx.enter_phase(Phase.END)
    yield Phase.END
