"""The CPU: operating modes, memory accesses through the MMU, and exception delivery to handlers the guest
installs (SDM Vol. 3A §4.10.4, §6); the control-register rules it applies are ``control.py``'s (spec §1.8).

Guest code is Python; it reaches memory only through ``load``/``store``/``fetch`` here. A fault is
delivered through the guest's IDT, read from simulated memory like every other implicit access; the
exception frame is pushed on the guest stack; the handler registered at the gate's address runs; when it
returns the frame is popped (IRET) and the faulting access is retried. A fault while delivering becomes
#DF, one while delivering #DF a triple fault. A guard ends runs that make no progress (``Livelock``).
"""

from __future__ import annotations

from collections.abc import Callable

from earlymm.arch.cpuid import CpuIdentity, cpuid_leaf
from earlymm.arch.modes import Features, PagingMode
from earlymm.hw.control import ControlRegisterFile
from earlymm.hw.delivery import Delivery, ExceptionFrame, Handler, IdtDelivery
from earlymm.hw.events import CrWrite, FaultRaised, ListTrace, ModeChange, TlbFlush
from earlymm.hw.faults import (
    ERRCODE_VECTORS,
    AccessEmulated,
    Exception_,
    Fault,
    GeneralProtection,
    Livelock,
    PageFault,
    Reason,
)
from earlymm.hw.memory import PhysMem
from earlymm.hw.mmu import Mmu
from earlymm.hw.regs import CpuMode
from earlymm.hw.tlb import Tlb
from earlymm.hw.walk import GP, HOLE, OK, WalkResult

__all__ = ["Cpu", "ExceptionFrame", "Handler"]

MAX_NESTING = 64


class Cpu(ControlRegisterFile):
    """Registers, modes and memory accesses; faults go to ``delivery`` (the IDT on bare metal). The
    control-register rules are ``ControlRegisterFile``'s; a refused write here is a #GP."""

    def __init__(self, mem: PhysMem, features: Features | None = None, *, trace: ListTrace | None = None,
                 tlb: Tlb | None = None, delivery: Delivery | None = None, identity: CpuIdentity | None = None,
                 progress_limit: int = 200_000, fault_limit: int = 5_000) -> None:
        super().__init__(mem, features or Features())
        self.identity = identity or CpuIdentity()
        self.delivery: Delivery = delivery if delivery is not None else IdtDelivery()
        self.trace = trace if trace is not None else ListTrace(enabled=False)
        self.mmu = Mmu(mem, self.regs, self.features, tlb)
        self.code: dict[int, tuple[str, Handler]] = {}  # code address -> guest handler
        self.depth = 0
        self.progress_limit = progress_limit
        self.fault_limit = fault_limit
        self._ops_since_progress = 0
        self._faults_since_progress = 0
        # What CPUID reports may be narrowed by whoever runs below the OS (a hypervisor's feature
        # levelling: masking MSRs or CPUID faulting); None reports the hardware as it is.
        self.cpuid_filter: Callable[[int, int, tuple[int, int, int, int]], tuple[int, int, int, int]] | None = None
        # The store in flight (va, size, value) while it is being translated: a delivery that emulates
        # the access (AccessEmulated) needs the value.
        self.pending_store: tuple[int, int, int] | None = None

    # -- modes ---------------------------------------------------------------------------------------
    @property
    def paging(self) -> PagingMode:
        return self.mmu.mode

    def far_jump(self, rip: int, *, long_mode_code: bool, cs: int | None = None) -> None:
        """Load CS (selector and L bit) and RIP, as a far jump/return does; a 64-bit target must be
        canonical. ``cs`` None keeps the selector."""
        before = self.mode
        self.regs.cs_l = long_mode_code
        if cs is not None:
            self.regs.cs = cs
        if self.mode is not before:
            self.trace.emit(ModeChange(self.mode.value))
        self.jump(rip)

    def jump(self, rip: int) -> None:
        """Transfer control to ``rip``: fetches there, so an unmapped target faults as on hardware."""
        if self.mode is not CpuMode.LONG64:
            rip &= 0xFFFF_FFFF
        self.fetch(rip)
        self.regs.rip = rip

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """The CPUID instruction: (EAX, EBX, ECX, EDX) for this CPU's identity and features."""
        regs = cpuid_leaf(self.identity, self.features, leaf, subleaf)
        return regs if self.cpuid_filter is None else self.cpuid_filter(leaf, subleaf, regs)

    # -- memory ----------------------------------------------------------------------------------------
    def _pa(self, va: int, kind: int, implicit: bool = False) -> int:
        r = self.regs
        if self.mode is not CpuMode.LONG64:
            va &= 0xFFFF_FFFF
        user = r.cpl == 3 and not implicit
        while True:
            res = self.mmu.translate(va, kind, user, implicit)
            if res.outcome == OK:
                if self.depth == 0:
                    self._ops_since_progress = 0
                    self._faults_since_progress = 0
                else:
                    self._ops_since_progress += 1
                    if self._ops_since_progress > self.progress_limit:
                        self._livelock(f"{self._ops_since_progress} accesses inside exception handlers "
                                       "without the interrupted access completing")
                return res.pa
            self.raise_fault(self.fault_of(res))

    def fault_of(self, res: WalkResult) -> Fault:
        """The fault a failed walk raises."""
        if res.outcome == GP:
            return GeneralProtection(Reason.NONCANONICAL, f"va {res.va:#x}")
        if res.outcome == HOLE:
            # Unassigned physical memory under a page-table read: the model cannot guess its contents.
            return Exception_(18, 0, f"machine check: page-table read at {res.path[-1]:#x} hit absent memory")
        assert res.reason is not None
        return PageFault(res.error_code, res.va, res.reason)

    def load(self, va: int, size: int = 8, *, implicit: bool = False) -> int:
        if (va & 0xFFF) + size <= 0x1000:
            return self.mem.read_int(self._pa(va, 0, implicit), size)
        return int.from_bytes(self.read(va, size, implicit=implicit), "little")

    def store(self, va: int, size: int, value: int, *, implicit: bool = False) -> None:
        if (va & 0xFFF) + size <= 0x1000:
            self.pending_store = (va, size, value)
            try:
                pa = self._pa(va, 1, implicit)
            except AccessEmulated:
                return
            finally:
                self.pending_store = None
            self.mem.write_int(pa, size, value)
        else:
            self.write(va, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"), implicit=implicit)

    def fetch(self, va: int) -> int:
        return self._pa(va, 2)

    def read(self, va: int, size: int, *, implicit: bool = False) -> bytes:
        if size > 0 and (va & 0xFFF) + size <= 0x1000:  # one page (a table's entries): one access, no gathering
            return self.mem.read(self._pa(va, 0, implicit), size)
        out = bytearray()
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            out += self.mem.read(self._pa(va, 0, implicit), n)
            va, size = va + n, size - n
        return bytes(out)

    def write(self, va: int, data: bytes, *, implicit: bool = False) -> None:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, 0x1000 - (va & 0xFFF))
            # A run of aligned 8-byte stores (memcpy/memset): a fault is taken at its first store, which
            # is the one an emulating delivery completes; the rest of the chunk is retried after it.
            self.pending_store = (va, 8, int.from_bytes(data[pos:pos + 8], "little")) if n >= 8 and not va & 7 \
                else None
            try:
                pa = self._pa(va, 1, implicit)
            except AccessEmulated:
                step = 8
                va, pos = va + step, pos + step
                continue
            finally:
                self.pending_store = None
            self.mem.write(pa, data[pos:pos + n])
            va, pos = va + n, pos + n

    # -- exceptions --------------------------------------------------------------------------------------
    def register_code(self, addr: int, name: str, handler: Handler) -> None:
        """Declare that the guest function ``handler`` lives at code address ``addr``."""
        self.code[addr] = (name, handler)

    def lidt(self, base: int, limit: int) -> None:
        if self._privileged("LIDT"):
            self.regs.idt_base, self.regs.idt_limit = base, limit

    def raise_exception(self, vector: int, error_code: int = 0, detail: str = "") -> None:
        """For guest code that executes a faulting instruction (``ud2``, ``int3`` …)."""
        self.raise_fault(Exception_(vector, error_code, detail))

    def raise_fault(self, fault: Fault) -> None:
        """Record the fault and hand it to the delivery; returns when the access may be retried."""
        vec = fault.vector
        cr2 = fault.cr2 if isinstance(fault, PageFault) else self.regs.cr2
        reason = fault.reason.value if isinstance(fault, PageFault | GeneralProtection) else fault.detail
        self.trace.emit(FaultRaised(vec, fault.error_code if vec in ERRCODE_VECTORS else 0, cr2, reason,
                                    self.depth))
        self.delivery.deliver(self, fault)

    def check_progress(self, fault: Fault) -> None:
        if self.depth >= MAX_NESTING:
            self._livelock(f"exceptions nested {self.depth} deep")
        self._faults_since_progress += 1
        if self._faults_since_progress > self.fault_limit:
            cr2 = fault.cr2 if isinstance(fault, PageFault) else self.regs.cr2
            reason = fault.reason.value if isinstance(fault, PageFault | GeneralProtection) else fault.detail
            self._livelock(f"{self._faults_since_progress} faults without the faulting access completing; "
                           f"last: vector {fault.vector} cr2 {cr2:#x} ({reason})")

    def _livelock(self, why: str) -> None:
        raise Livelock(why, list(self.trace.recent))

    # -- what a control-register write sets off (hooks of ControlRegisterFile) ------------------------
    def _gp(self, detail: str) -> None:
        self.raise_fault(GeneralProtection(Reason.REGISTER, detail))

    def _mode_changed(self) -> None:
        self.trace.emit(ModeChange(self.mode.value))

    def _cr_changed(self, reg: str, old: int, new: int) -> None:
        self.mmu.reload()
        self.trace.emit(CrWrite(reg, old, new))

    def _flush(self, *, include_global: bool, pcid: int | None = None) -> None:
        self.mmu.tlb.flush(include_global=include_global, pcid=pcid)
        self.trace.emit(TlbFlush("all" if include_global else "non-global", 0, pcid or 0))

    def invlpg(self, va: int) -> None:
        if not self._privileged("INVLPG"):
            return
        plan = self.mmu.plan
        if plan.va_bits and va >> (plan.va_bits - 1) not in (0, plan.canon_ones):
            return  # INVLPG of a non-canonical address is a no-op
        self.mmu.tlb.invlpg(va, self.mmu.pcid)
        self.trace.emit(TlbFlush("page", va, self.mmu.pcid))

    def flush_tlb(self, include_global: bool = False) -> None:
        self._flush(include_global=include_global)
