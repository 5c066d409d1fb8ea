"""The native x86-64 boot path as a sequence of phases (simpy-style stepping: ``run(until=…)``).

loader → ``startup_64`` → ``x86_64_start_kernel`` → ``setup_arch`` … ``init_mem_mapping`` →
``early_trap_pf_init``. Each phase runs on the CPU model; whatever stops the machine (a panic, a halt, a
triple fault, a livelock) ends the run and is reported with the phase it happened in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from earlymm.hw.events import Event, ListTrace
from earlymm.hw.faults import CpuException, Halt, SimulationError, describe
from earlymm.hw.walk import OK, describe_levels
from earlymm.kernel import invariants as inv
from earlymm.kernel.context import KernelConfig, KernelContext
from earlymm.kernel.events import PhaseEntered, RunEnded
from earlymm.kernel.head64 import x86_64_start_kernel
from earlymm.kernel.head_64 import startup_64
from earlymm.kernel.image import install_image
from earlymm.kernel.layout import build_layout, layout_from_symbols
from earlymm.kernel.paravirt.ops import PvOps
from earlymm.kernel.phases import BootOutcome, Phase
from earlymm.kernel.setup import setup_arch
from earlymm.platform.pc import MachineConfig, load


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
        used = ctx.rd(ctx.sym("next_early_pgt"), 4)
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
    """How a boot ended (outcome, reason, phase), the machine it ran on, and what it checked."""

    outcome: BootOutcome
    reason: str
    phase: str
    ctx: KernelContext
    observer: Observer
    completed: list[str] = field(default_factory=list)
    console: str = ""


def make_context(machine: MachineConfig, kernel: KernelConfig, *, trace: bool = False,
                 image_size: int = 24 << 20) -> KernelContext:
    """The composition root of the native x86-64 path: the kernel image's layout, the PC platform with
    its boot loader's work done, the image installed, and the kernel context over them."""
    layout = layout_from_symbols(kernel.profile, kernel.symbols, kernel.pool_pages) if kernel.symbols \
        else build_layout(kernel.profile, kernel.pool_pages, image_size)
    events = ListTrace(enabled=trace, keep=64)
    events.emit(PhaseEntered("boot loader"))
    if kernel.decompressor is None:
        platform = load(machine, layout.image_size, trace=events)
        install_image(platform.mem, layout, machine.kernel_at)
        return KernelContext(platform, layout, kernel)
    from earlymm.kernel import decompressor  # only a boot that starts in the decompressor (seed 003) loads it

    # the loader reserves init_size: the extracted kernel, then the decompressor working above it
    dlay = decompressor.Layout((machine.kernel_at + layout.image_size + 0xFFFF) & ~0xFFFF)
    size = dlay.base + decompressor.SIZE - machine.kernel_at
    platform = load(machine, size, trace=events, entry=dlay.startup_64)
    install_image(platform.mem, layout, machine.kernel_at)
    ctx = KernelContext(platform, layout, kernel)
    decompressor.install_decompressor(ctx, dlay)
    ctx.decompressor_layout = dlay
    return ctx


def boot(machine: MachineConfig, kernel: KernelConfig, *, until: Phase | None = None, trace: bool = False,
         image_size: int = 24 << 20, pv: Callable[[KernelContext], PvOps] | None = None,
         listeners: Sequence[Callable[[Event], None]] = (),
         instrument: Callable[[KernelContext], None] | None = None) -> BootResult:
    """Run the native x86-64 path. ``pv`` replaces the native ``pv_ops`` (tests watch the seam with it);
    ``listeners`` see every event as it happens (progress displays); ``instrument`` is given the machine
    before the kernel's first instruction (tools that watch memory attach there)."""
    ctx = make_context(machine, kernel, trace=trace, image_size=image_size)
    ctx.trace.listeners.extend(listeners)
    if instrument is not None:
        instrument(ctx)
    if pv is not None:
        ctx.pv = pv(ctx)
    obs = Observer()
    ctx.observer = obs
    return run_path(ctx, native_x86_64(ctx, obs), obs, until, diagnose)


def run_path(ctx: KernelContext, path: Iterator[Phase], obs: Observer, until: Phase | None,
             explain: Callable[[KernelContext, SimulationError], str]) -> BootResult:
    """Step a boot path's phases until ``until`` (or its end); whatever stops the machine becomes the
    result's outcome and reason (``explain`` adds what the path can say about a simulation error)."""
    result = BootResult(BootOutcome.BOOTED, "reached the end of the modelled boot path", "", ctx, obs)
    try:
        for phase in path:
            result.completed.append(phase.value)
            if until is phase and phase is not Phase.END:
                result.outcome, result.reason = BootOutcome.STOPPED, f"stopped after {phase.value} (--until)"
                break
    except Halt as e:
        result.outcome, result.reason = BootOutcome(e.outcome), e.reason
    except SimulationError as e:
        result.outcome, result.reason = BootOutcome(e.outcome), e.reason + explain(ctx, e)
    except CpuException as e:
        result.outcome, result.reason = BootOutcome.FAULT, f"unhandled {describe(e.fault)}"
    result.phase = ctx.phase.value if ctx.phase is not None else ""
    result.console = "\n".join(ctx.console)
    ctx.emit(RunEnded(result.outcome.value, result.reason))
    return result


def native_x86_64(ctx: KernelContext, obs: Observer) -> Iterator[Phase]:
    """The native x86-64 boot path; yields each ``Phase`` as it completes (the caller may stop there)."""
    if ctx.config.decompressor is not None:
        from earlymm.kernel import decompressor

        ctx.enter_phase(Phase.DECOMPRESSOR)
        decompressor.decompressor_stage(ctx, decompressor.Variant(ctx.config.decompressor), ctx.decompressor_layout)
        yield Phase.DECOMPRESSOR
    ctx.enter_phase(Phase.STARTUP_64)
    startup_64(ctx)
    obs.checks.extend(inv.after_startup_64(ctx))
    yield Phase.STARTUP_64
    ctx.enter_phase(Phase.X86_64_START_KERNEL)
    x86_64_start_kernel(ctx, ctx.platform.entry.boot_data)  # %rsi at startup_64, passed on in %rdi
    yield Phase.X86_64_START_KERNEL
    ctx.enter_phase(Phase.SETUP_ARCH)
    arch = setup_arch(ctx)
    yield next(arch)  # up to init_mem_mapping
    yield_after = next(arch)
    obs.checks.extend(inv.after_init_mem_mapping(ctx))
    yield yield_after
    for _ in arch:
        pass
    yield Phase.END


def diagnose(ctx: KernelContext, _error: SimulationError | None = None) -> str:
    """Why the machine stopped, in words: for a pool that cannot hold one mapping, what the handler kept
    doing; for a #PF, where the CPU's walk goes wrong — and, only when the early handler ran, whether
    it edited a table the CPU does not read (the RFC's missing phys_base); before any IDT, that nothing
    could have handled the fault."""
    last = ctx.stats.last_fault
    if last is None:
        return ""
    if ctx.cpu.regs.idt_limit < 16 * last.vector + 15 and ctx.stats.handler_calls == 0:
        return (f"; no IDT was loaded yet (the loader's is empty; {ctx.profile.idt_handlers} are installed in "
                f"x86_64_start_kernel), so the fault could not be handled: the CPU escalated it to #DF and, "
                "that failing too, reset")
    if last.vector != 14:
        return ""
    cr2 = last.cr2
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
    if ctx.stats.handler_mapped:
        for v in inv.early_mapping(ctx, cr2)[:1]:
            if "points outside early_dynamic_pgts" in v:
                why += f"; {v} (the handler edits the pool page, the CPU reads another one)"
    if res.error_code & 8:
        why += "; a reserved bit is set in an entry the handler wrote (bit 63 without EFER.NXE?)"
    return why
