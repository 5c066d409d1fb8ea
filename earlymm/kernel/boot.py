"""The native x86-64 boot path as a sequence of phases (simpy-style stepping: ``run(until=…)``).

loader → ``startup_64`` → ``x86_64_start_kernel`` → ``setup_arch`` … ``init_mem_mapping`` →
``early_trap_pf_init``. Each phase runs on the CPU model; whatever stops the machine (a panic, a halt, a
triple fault, a livelock) ends the run and is reported with the phase it happened in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from earlymm.hw.events import ListTrace
from earlymm.hw.faults import CpuException, Halt, SimulationError
from earlymm.hw.walk import OK, describe_levels
from earlymm.kernel import invariants as inv
from earlymm.kernel.context import KernelConfig, KernelContext
from earlymm.kernel.events import PhaseEntered, RunEnded
from earlymm.kernel.head64 import x86_64_start_kernel
from earlymm.kernel.head_64 import startup_64
from earlymm.kernel.image import install_image
from earlymm.kernel.layout import build_layout
from earlymm.kernel.setup import setup_arch
from earlymm.platform.pc import MachineConfig, load


class Phase(enum.Enum):
    STARTUP_64 = "startup_64"
    X86_64_START_KERNEL = "x86_64_start_kernel"
    SETUP_ARCH = "setup_arch"
    INIT_MEM_MAPPING = "init_mem_mapping"
    END = "end"

    @classmethod
    def parse(cls, text: str) -> Phase:
        for p in cls:
            if p.value == text:
                return p
        raise ValueError(f"unknown phase {text!r} (one of: {', '.join(p.value for p in cls)})")


class Observer:
    """Runs the spec §3.11 checks at the moments they are about; collects results."""

    def __init__(self) -> None:
        self.checks: list[inv.Check] = []
        self.reset_checked = False
        self.mapping_violations: list[str] = []
        self.mappings_checked = 0

    def after_reset(self, ctx: KernelContext) -> None:
        if not self.reset_checked:
            self.checks.extend(inv.after_reset(ctx))
            self.reset_checked = True

    def after_mapping(self, ctx: KernelContext, address: int) -> None:
        self.mappings_checked += 1
        if len(self.mapping_violations) < 20:
            self.mapping_violations.extend(inv.early_mapping(ctx, address))
        used = ctx.rd(ctx.sym("next_early_pgt"))
        if used > ctx.config.pool_pages:
            self.mapping_violations.append(f"pool overrun: next_early_pgt = {used} > {ctx.config.pool_pages}")

    def final(self) -> list[inv.Check]:
        out = list(self.checks)
        if self.mappings_checked:
            out.append(inv.Check("early_make_pgtable: tables from the pool, PMDs map (va − PAGE_OFFSET) with "
                                 "early_pmd_flags, pool never overrun", not self.mapping_violations,
                                 "; ".join(self.mapping_violations[:3])))
        return out


@dataclass
class BootResult:
    outcome: str
    reason: str
    phase: str
    ctx: KernelContext
    observer: Observer
    completed: list[str] = field(default_factory=list)
    console: str = ""


def make_context(machine: MachineConfig, kernel: KernelConfig, *, trace: bool = False,
                 image_size: int = 24 << 20) -> KernelContext:
    layout = build_layout(kernel.profile, kernel.pool_pages, image_size)
    events = ListTrace(enabled=trace, keep=64)
    events.emit(PhaseEntered("boot loader"))
    lm = load(machine, layout.image_size, trace=events)
    install_image(lm.mem, layout, machine.kernel_at)
    return KernelContext(lm, layout, kernel)


def boot(machine: MachineConfig, kernel: KernelConfig, *, until: Phase | None = None, trace: bool = False,
         image_size: int = 24 << 20) -> BootResult:
    ctx = make_context(machine, kernel, trace=trace, image_size=image_size)
    obs = Observer()
    ctx.observer = obs
    result = BootResult("booted", "reached the end of the modelled boot path", "", ctx, obs)
    steps = _steps(ctx, obs)
    try:
        for phase in Phase:
            result.phase = phase.value
            ctx.emit(PhaseEntered(phase.value))
            next(steps)
            result.completed.append(phase.value)
            if until is phase and phase is not Phase.END:
                result.outcome, result.reason = "stopped", f"stopped after {phase.value} (--until)"
                break
    except Halt as e:
        result.outcome, result.reason = e.outcome, e.reason
    except SimulationError as e:
        result.outcome, result.reason = e.outcome, e.reason + diagnose(ctx)
    except CpuException as e:
        result.outcome, result.reason = "fault", f"unhandled {e.fault}"
    result.console = "\n".join(ctx.console)
    ctx.emit(RunEnded(result.outcome, result.reason))
    return result


def _steps(ctx: KernelContext, obs: Observer) -> Iterator[None]:
    """The boot path, pausing after each ``Phase`` (the caller steps it with ``next``)."""
    startup_64(ctx)
    obs.checks.extend(inv.after_startup_64(ctx))
    yield
    x86_64_start_kernel(ctx, ctx.machine.config.boot_params_at)
    yield
    arch = setup_arch(ctx)
    next(arch)  # up to init_mem_mapping
    yield
    next(arch)
    obs.checks.extend(inv.after_init_mem_mapping(ctx))
    yield
    for _ in arch:
        pass
    yield


def diagnose(ctx: KernelContext) -> str:
    """For a livelock: say what the handler kept doing, and where the CPU's walk goes wrong."""
    if not ctx.cpu.fault_counts.get(14):
        return ""
    cr2 = ctx.cpu.regs.cr2  # the last #PF's address
    if ctx.stats.pool_resets > 2 * ctx.stats.handler_calls and ctx.config.pool_pages < 2:
        return (f"; early_make_pgtable reset the pool {ctx.stats.pool_resets} times while handling "
                f"{ctx.stats.handler_calls} fault(s): mapping {cr2:#x} needs a PUD and a PMD page but the "
                f"pool holds {ctx.config.pool_pages} — every allocation resets it and restarts ('goto again')")
    res = ctx.cpu.mmu.probe(cr2)
    if res.outcome == OK:
        return f"; cr2 {cr2:#x} now translates to {res.pa:#x}"
    plan = ctx.cpu.mmu.plan
    steps = ", ".join(f"{lp.level.name}[{idx}]@{ea:#x}={'?' if e is None else hex(e)}"
                      for lp, _t, idx, ea, e in describe_levels(plan, res))
    why = f"; the CPU's walk of cr2 {cr2:#x}: {steps} → {res.reason.value if res.reason else '?'}"
    for v in inv.early_mapping(ctx, cr2)[:1]:
        if "points outside early_dynamic_pgts" in v:
            why += f"; {v} (the handler edits the pool page, the CPU reads another one)"
    if res.error_code & 8:
        why += "; a reserved bit is set in an entry the handler wrote (bit 63 without EFER.NXE?)"
    return why
