"""Exception delivery (SDM Vol. 3A ch. 6, §6.14): the CPU reads the gate from the guest's IDT in
simulated memory, pushes the frame on the guest stack, runs the handler installed at the gate's address,
and IRETs; a fault while delivering becomes #DF, one while delivering #DF a triple fault; a guard ends
runs that make no progress. ``Cpu`` inherits this unit; it is split out only to keep modules small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from earlymm.hw.events import DoubleFault, FaultDelivered, FaultRaised, Iret, ListTrace
from earlymm.hw.faults import (
    DF_VECTOR,
    ERRCODE_VECTORS,
    CpuException,
    Exception_,
    Fault,
    GeneralProtection,
    Livelock,
    PageFault,
    Reason,
    TripleFault,
)
from earlymm.hw.walk import OK

if TYPE_CHECKING:
    from earlymm.hw.cpu import Cpu
    from earlymm.hw.memory import PhysMem
    from earlymm.hw.mmu import Mmu
    from earlymm.hw.regs import ControlRegs
    from earlymm.hw.walk import WalkResult

KERNEL_CS = 0x10
MAX_NESTING = 64


@dataclass(frozen=True, slots=True)
class ExceptionFrame:
    """What a handler sees: the vector, the error code and where the pushed frame lives."""

    vector: int
    error_code: int
    rip: int
    cs: int
    frame_addr: int  # address of the saved RIP on the stack (the frame a handler may edit)
    depth: int


Handler = Callable[["Cpu", ExceptionFrame], None]


class _DeliveryFault(Exception):
    def __init__(self, fault: Fault) -> None:
        super().__init__(repr(fault))
        self.fault = fault


class ExceptionUnit:
    """The delivery half of ``Cpu`` (which provides these attributes)."""

    regs: ControlRegs
    mmu: Mmu
    mem: PhysMem
    trace: ListTrace
    code: dict[int, tuple[str, Handler]]
    depth: int
    fault_limit: int
    fault_counts: dict[int, int]
    _faults_since_progress: int

    def _fault_of(self, res: WalkResult) -> Fault:
        raise NotImplementedError

    # -- exceptions ------------------------------------------------------------------------------------
    def register_code(self, addr: int, name: str, handler: Handler) -> None:
        """Declare that the guest function ``handler`` lives at code address ``addr``."""
        self.code[addr] = (name, handler)

    def lidt(self, base: int, limit: int) -> None:
        self.regs.idt_base, self.regs.idt_limit = base, limit

    def raise_exception(self, vector: int, error_code: int = 0, detail: str = "") -> None:
        """For guest code that executes a faulting instruction (``ud2``, ``int3`` …)."""
        self._raise(Exception_(vector, error_code, detail))

    def _raise(self, fault: Fault) -> None:
        vec = fault.vector
        code = fault.error_code if vec in ERRCODE_VECTORS else 0
        cr2 = fault.cr2 if isinstance(fault, PageFault) else self.regs.cr2
        reason = fault.reason.value if isinstance(fault, PageFault | GeneralProtection) else fault.detail
        self.trace.emit(FaultRaised(vec, code, cr2, reason, self.depth))
        self.fault_counts[vec] = self.fault_counts.get(vec, 0) + 1
        if self.regs.idt_limit < 0:
            raise CpuException(fault)  # no IDT: the caller gets the fault as a value
        if self.depth >= MAX_NESTING:
            self._livelock(f"exceptions nested {self.depth} deep")
        self._faults_since_progress += 1
        if self._faults_since_progress > self.fault_limit:
            self._livelock(f"{self._faults_since_progress} faults without the faulting access completing; "
                           f"last: vector {vec} cr2 {cr2:#x} ({reason})")
        if isinstance(fault, PageFault):
            self.regs.cr2 = fault.cr2
        self._deliver(vec, code)

    def _deliver(self, vector: int, code: int) -> None:
        r = self.regs
        try:
            name, handler, frame = self._enter(vector, code)
        except _DeliveryFault as inner:
            if vector == DF_VECTOR:
                raise TripleFault(f"fault while delivering #DF ({inner.fault}): triple fault, machine reset",
                                  list(self.trace.recent)) from None
            self.trace.emit(DoubleFault(vector, inner.fault.vector, str(inner.fault)))
            return self._deliver(DF_VECTOR, 0)
        self.depth += 1
        self.trace.emit(FaultDelivered(vector, name, self.depth))
        try:
            handler(cast("Cpu", self), frame)
        finally:
            self.depth -= 1
        if vector == DF_VECTOR:
            raise TripleFault("#DF handler returned: a double fault is an abort", list(self.trace.recent))
        # IRET: pop RIP, CS, RFLAGS, RSP, SS from the frame (the handler may have edited RIP).
        # IRET's pops are the CPU's own accesses, not progress of the interrupted code.
        try:
            r.rip = self._implicit_load(frame.frame_addr)
            r.rflags = self._implicit_load(frame.frame_addr + 16)
            r.rsp = self._implicit_load(frame.frame_addr + 24)
        except CpuException as e:
            self._raise(e.fault)
        self.trace.emit(Iret(vector, self.depth))

    def _enter(self, vector: int, code: int) -> tuple[str, Handler, ExceptionFrame]:
        """Read the gate and push the frame; any fault here is a fault *while delivering*."""
        r = self.regs
        if 16 * vector + 15 > r.idt_limit:
            raise _DeliveryFault(GeneralProtection(Reason.REGISTER, f"vector {vector} beyond the IDT limit"))
        try:
            lo = self._implicit_load(r.idt_base + 16 * vector)
            hi = self._implicit_load(r.idt_base + 16 * vector + 8)
        except CpuException as e:
            raise _DeliveryFault(e.fault) from None
        if not lo >> 47 & 1:
            raise _DeliveryFault(Exception_(11, 8 * vector + 2, f"IDT gate {vector} not present"))
        target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | ((hi & 0xFFFF_FFFF) << 32)
        entry = self.code.get(target)
        if entry is None:
            raise _DeliveryFault(Exception_(6, 0, f"IDT gate {vector} points at {target:#x}, where no "
                                                  "handler code was installed"))
        rsp = (r.rsp & ~0xF) - 8 * 6  # SS, RSP, RFLAGS, CS, RIP, error code (SDM §6.14.2)
        frame_vals = [code, r.rip, KERNEL_CS, r.rflags, r.rsp, 0x18]
        try:
            for i, v in enumerate(frame_vals):
                self._implicit_store(rsp + 8 * i, v)
        except CpuException as e:
            raise _DeliveryFault(e.fault) from None
        r.rsp = rsp
        return entry[0], entry[1], ExceptionFrame(vector, code, r.rip, KERNEL_CS, rsp + 8, self.depth + 1)

    def _implicit_load(self, va: int) -> int:
        res = self.mmu.translate(va, 0, False, True)
        if res.outcome != OK:
            raise CpuException(self._fault_of(res))
        return self.mem.read_u64(res.pa)

    def _implicit_store(self, va: int, value: int) -> None:
        res = self.mmu.translate(va, 1, False, True)
        if res.outcome != OK:
            raise CpuException(self._fault_of(res))
        self.mem.write_u64(res.pa, value)

    def _livelock(self, why: str) -> None:
        raise Livelock(why, list(self.trace.recent))
