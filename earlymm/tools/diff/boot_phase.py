"""A phase of earlymm's boot model as an address space to compare: boot with ``until=PHASE`` (the public
``earlymm.kernel.boot.boot``), then take the machine's physical memory and its CPU's paging registers.
The model's own link-time symbols come along, so table pages and VAs can be labelled without a file."""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.kernel.boot import boot
from earlymm.kernel.context import KernelConfig
from earlymm.kernel.phases import Phase
from earlymm.platform.pc import MachineConfig
from earlymm.tools.machine_view import SetupError
from earlymm.tools.ptdump.space import Space, open_space
from earlymm.tools.symbols.table import Symbol, SymbolTable

PREFIX = "boot:"


@dataclass
class PhaseState:
    space: Space
    phase: Phase
    outcome: str  # "stopped", "booted", or how it crashed
    reason: str
    symbols: SymbolTable

    @property
    def crashed(self) -> bool:
        return self.outcome not in ("stopped", "booted")


def parse_phase(operand: str) -> Phase | None:
    """``boot:PHASE`` as a ``Phase`` (None when the operand is not a boot phase). Raises ``ValueError``."""
    if not operand.startswith(PREFIX):
        return None
    return Phase.parse(operand[len(PREFIX):])


def run_phase(machine: MachineConfig, kernel: KernelConfig, phase: Phase, image_size: int) -> PhaseState:
    """Boot until ``phase``; raises ``ValueError`` for a machine the loader refuses and ``SetupError`` when
    the CPU is not paging there."""
    result = boot(machine, kernel, until=phase, image_size=image_size)
    ctx = result.ctx
    r = ctx.cpu.regs
    try:
        space = open_space(ctx.platform.mem, (r.cr0, r.cr3, r.cr4, r.efer), machine.features, absent_zero=True)
    except SetupError as e:
        raise SetupError(f"{PREFIX}{phase.value}: {e}") from None
    table = SymbolTable((Symbol(n, a, "D") for n, a in ctx.layout.symbols.items()), "earlymm's boot model", "model")
    return PhaseState(space, phase, result.outcome.value, result.reason, table)
