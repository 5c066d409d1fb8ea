"""Exception delivery (SDM Vol. 3A ch. 6, §6.11–§6.14), a collaborator of the CPU.

The CPU hands every fault to its ``Delivery``. On bare metal that is ``IdtDelivery``: it writes CR2 for a
#PF, reads the gate from the guest's IDT in simulated memory (16-byte IA-32e gates or 8-byte 32-bit
gates: a ``GateFormat``), pushes the frame on the guest stack, runs the handler the guest installed at
the gate's address and IRETs; a fault while delivering becomes #DF, one while delivering #DF a triple
fault. A hypervisor platform (Xen PV's trap table and ``vcpu_info`` CR2) plugs in another ``Delivery``.
The CPU is reached through ``CpuPort``, so this module never imports ``cpu.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from earlymm.arch.flags import Efer
from earlymm.hw.events import DoubleFault, FaultDelivered, Iret, ListTrace
from earlymm.hw.faults import (
    DF_VECTOR,
    ERRCODE_VECTORS,
    CpuException,
    Exception_,
    Fault,
    GeneralProtection,
    PageFault,
    Reason,
    TripleFault,
    describe,
)
from earlymm.hw.memory import PhysMem
from earlymm.hw.mmu import Mmu
from earlymm.hw.regs import ControlRegs
from earlymm.hw.walk import OK, WalkResult

KERNEL_CS = 0x10


@dataclass(frozen=True, slots=True)
class ExceptionFrame:
    """What a handler sees: the vector, the error code and where the pushed frame lives."""

    vector: int
    error_code: int
    rip: int
    cs: int
    frame_addr: int  # address of the saved RIP/EIP on the stack (the frame a handler may edit)
    depth: int


Handler = Callable[[ExceptionFrame], None]


class CpuPort(Protocol):
    """What delivery needs of the CPU: its registers, MMU, memory, trace, the guest code it runs, and a
    way back into its fault path (for a fault raised by IRET itself)."""

    regs: ControlRegs
    mmu: Mmu
    mem: PhysMem
    trace: ListTrace
    code: dict[int, tuple[str, Handler]]
    depth: int

    def fault_of(self, res: WalkResult) -> Fault: ...

    def raise_fault(self, fault: Fault) -> None: ...

    def check_progress(self, fault: Fault) -> None:
        """Before a delivery: end a run whose faults nest without bound or never let the access complete."""


class Delivery(Protocol):
    """Turns a fault into whatever the platform does with it. Returns when the interrupted access may be
    retried (the handler returned); raises ``CpuException`` when there is nowhere to deliver it, or a
    ``SimulationError`` (triple fault, domain crash) when the machine stops."""

    def deliver(self, cpu: CpuPort, fault: Fault) -> None: ...


@dataclass(frozen=True, slots=True)
class GateFormat:
    """An IDT gate layout and the frame the CPU pushes through it (SDM §6.11, §6.12.1, §6.14.1)."""

    name: str
    gate_size: int  # 16 (IA-32e) or 8 (protected mode)
    word: int  # 8 or 4 bytes per pushed slot
    always_push_stack: bool  # IA-32e pushes SS:RSP on every delivery; 32-bit only on a privilege change
    align_stack: bool  # IA-32e aligns RSP down to 16 bytes before pushing

    def decode(self, lo: int, hi: int) -> tuple[bool, int]:
        """(present, target offset) of a gate read as two words (``hi`` unused for 8-byte gates)."""
        present = bool(lo >> 47 & 1)
        target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000)
        if self.gate_size == 16:
            target |= (hi & 0xFFFF_FFFF) << 32
        return present, target

    def encode(self, target: int, selector: int, type_attr: int = 0x8E) -> tuple[int, int]:
        """The words of a present interrupt gate (DPL 0) to ``selector:target``."""
        lo = (target & 0xFFFF) | (selector << 16) | (type_attr << 40) | (((target >> 16) & 0xFFFF) << 48)
        return lo, (target >> 32 if self.gate_size == 16 else 0)


GATE64 = GateFormat("IA-32e", 16, 8, True, True)
GATE32 = GateFormat("protected mode", 8, 4, False, False)


class _DeliveryFault(Exception):
    def __init__(self, fault: Fault) -> None:
        super().__init__(repr(fault))
        self.fault = fault


class IdtDelivery:
    """Bare-metal delivery through the IDT. ``gates`` fixes the gate format; by default it follows the
    CPU's mode (IA-32e gates when EFER.LMA=1), as the hardware does."""

    def __init__(self, gates: GateFormat | None = None) -> None:
        self.gates = gates

    def format(self, cpu: CpuPort) -> GateFormat:
        if self.gates is not None:
            return self.gates
        return GATE64 if cpu.regs.efer & Efer.LMA else GATE32

    def deliver(self, cpu: CpuPort, fault: Fault) -> None:
        if cpu.regs.idt_limit < 0:
            raise CpuException(fault)  # no IDT: the caller gets the fault as a value
        cpu.check_progress(fault)
        if isinstance(fault, PageFault):
            cpu.regs.cr2 = fault.cr2
        code = fault.error_code if fault.vector in ERRCODE_VECTORS else 0
        self._deliver(cpu, fault.vector, code, describe(fault))

    def _deliver(self, cpu: CpuPort, vector: int, code: int, what: str) -> None:
        r, fmt = cpu.regs, self.format(cpu)
        try:
            name, handler, frame = self._enter(cpu, fmt, vector, code)
        except _DeliveryFault as inner:
            why = describe(inner.fault)
            if vector == DF_VECTOR:
                raise TripleFault(f"triple fault, machine reset: {what}; delivering the #DF failed too ({why})",
                                  list(cpu.trace.recent)) from None
            cpu.trace.emit(DoubleFault(vector, inner.fault.vector, why))
            return self._deliver(cpu, DF_VECTOR, 0, f"{what} could not be delivered ({why})")
        cpu.depth += 1
        cpu.trace.emit(FaultDelivered(vector, name, cpu.depth))
        try:
            handler(frame)
        finally:
            cpu.depth -= 1
        if vector == DF_VECTOR:
            raise TripleFault("#DF handler returned: a double fault is an abort", list(cpu.trace.recent))
        # IRET: pop RIP, CS, RFLAGS (and RSP, SS where they were pushed) from the frame, which the handler
        # may have edited. IRET's pops are the CPU's own accesses, not progress of the interrupted code.
        w = fmt.word
        try:
            r.rip = self._load(cpu, frame.frame_addr, w)
            r.rflags = self._load(cpu, frame.frame_addr + 2 * w, w)
            r.rsp = self._load(cpu, frame.frame_addr + 3 * w, w) if fmt.always_push_stack \
                else frame.frame_addr + 3 * w
        except CpuException as e:
            cpu.raise_fault(e.fault)
        cpu.trace.emit(Iret(vector, cpu.depth))

    def _enter(self, cpu: CpuPort, fmt: GateFormat, vector: int, code: int) -> tuple[str, Handler, ExceptionFrame]:
        """Read the gate and push the frame; any fault here is a fault *while delivering*."""
        r = cpu.regs
        if fmt.gate_size * vector + fmt.gate_size - 1 > r.idt_limit:
            raise _DeliveryFault(GeneralProtection(Reason.REGISTER, f"vector {vector} beyond the IDT limit"))
        at = r.idt_base + fmt.gate_size * vector
        try:
            lo = self._load(cpu, at, 8)
            hi = self._load(cpu, at + 8, 8) if fmt.gate_size == 16 else 0
        except CpuException as e:
            raise _DeliveryFault(e.fault) from None
        present, target = fmt.decode(lo, hi)
        if not present:
            raise _DeliveryFault(Exception_(11, 8 * vector + 2, f"IDT gate {vector} not present"))
        entry = cpu.code.get(target)
        if entry is None:
            raise _DeliveryFault(Exception_(6, 0, f"IDT gate {vector} points at {target:#x}, where no "
                                                  "handler code was installed"))
        w = fmt.word
        # From the new stack top up: [error code], RIP, CS, RFLAGS, then RSP and SS where the format always
        # pushes them (SDM §6.12.1, §6.14.2). Only the vectors of ERRCODE_VECTORS push an error code.
        has_code = vector in ERRCODE_VECTORS
        slots = ([code] if has_code else []) + [r.rip, r.cs, r.rflags] \
            + ([r.rsp, 0x18] if fmt.always_push_stack else [])
        top = (r.rsp & ~0xF) if fmt.align_stack else r.rsp
        sp = (top - w * len(slots)) & ((1 << (8 * w)) - 1)
        try:
            for i, v in enumerate(slots):
                self._store(cpu, sp + w * i, v, w)
        except CpuException as e:
            raise _DeliveryFault(e.fault) from None
        r.rsp = sp
        rip_at = sp + (w if has_code else 0)
        return entry[0], entry[1], ExceptionFrame(vector, code, r.rip, r.cs, rip_at, cpu.depth + 1)

    @staticmethod
    def _load(cpu: CpuPort, va: int, size: int) -> int:
        res = cpu.mmu.translate(va, 0, False, True)
        if res.outcome != OK:
            raise CpuException(cpu.fault_of(res))
        return cpu.mem.read_int(res.pa, size)

    @staticmethod
    def _store(cpu: CpuPort, va: int, value: int, size: int) -> None:
        res = cpu.mmu.translate(va, 1, False, True)
        if res.outcome != OK:
            raise CpuException(cpu.fault_of(res))
        cpu.mem.write_int(res.pa, size, value & ((1 << (8 * size)) - 1))
