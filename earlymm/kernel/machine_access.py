"""What every boot path's kernel context does with the machine it runs on, whatever the architecture:
its CPU, the one event stream (design §7.2), the phase it is in, and its symbols. The x86-64
(``kernel/context.py``) and i386 (``kernel/i386/context.py``) contexts add their own memory accessors
(``rd``/``wr`` of an ``unsigned long``, 8 or 4 bytes), address conversions and page-table geometry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from earlymm.hw.events import Event, ListTrace
from earlymm.kernel.events import PhaseEntered

if TYPE_CHECKING:
    from earlymm.hw.cpu import Cpu
    from earlymm.kernel.phases import Phase
    from earlymm.platform.base import Platform


class Symbols(Protocol):
    """A kernel layout: symbol name → address."""

    def __getitem__(self, name: str) -> int: ...


class MachineAccess:
    """Mixed into a context dataclass that has ``platform``, ``layout`` and ``phase`` fields."""

    platform: Platform
    layout: Symbols
    phase: Phase | None

    @property
    def cpu(self) -> Cpu:
        return self.platform.cpu

    @property
    def trace(self) -> ListTrace:
        return self.platform.trace

    def emit(self, event: Event) -> None:
        self.platform.trace.emit(event)

    def enter_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.emit(PhaseEntered(phase.value))

    def sym(self, name: str) -> int:
        return self.layout[name]
