"""The CPU: control-register rules, operating modes, memory accesses through the MMU, and exception
delivery to handlers the guest installs (spec §1.8; SDM Vol. 3A §2.5, §4.10.4, §6).

Guest code is Python; it reaches memory only through ``load``/``store``/``fetch`` here. A fault is
delivered through the guest's IDT, read from simulated memory like every other implicit access; the
exception frame is pushed on the guest stack; the handler registered at the gate's address runs; when it
returns the frame is popped (IRET) and the faulting access is retried. A fault while delivering becomes
#DF, one while delivering #DF a triple fault. A guard ends runs that make no progress (``Livelock``).
"""

from __future__ import annotations

from collections.abc import Callable

from earlymm.arch.cpuid import CpuIdentity, cpuid_leaf
from earlymm.arch.entry import mask, pdpte_reserved
from earlymm.arch.flags import CR0_RESERVED, CR4_RESERVED, EFER_RESERVED, Cr0, Cr4, Efer
from earlymm.arch.modes import Features, PagingMode
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
from earlymm.hw.regs import ControlRegs, CpuMode
from earlymm.hw.tlb import Tlb
from earlymm.hw.walk import GP, HOLE, OK, WalkResult

__all__ = ["Cpu", "ExceptionFrame", "Handler"]

MAX_NESTING = 64

_CR0_PE = int(Cr0.PE)
_EFER_LMA = int(Efer.LMA)


class Cpu:
    """Registers, modes and memory accesses; faults go to ``delivery`` (the IDT on bare metal)."""

    def __init__(self, mem: PhysMem, features: Features | None = None, *, trace: ListTrace | None = None,
                 tlb: Tlb | None = None, delivery: Delivery | None = None, identity: CpuIdentity | None = None,
                 progress_limit: int = 200_000, fault_limit: int = 5_000) -> None:
        self.mem = mem
        self.identity = identity or CpuIdentity()
        self.delivery: Delivery = delivery if delivery is not None else IdtDelivery()
        self.features = features or Features()
        self.regs = ControlRegs()
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
    def mode(self) -> CpuMode:
        r = self.regs
        # Plain int masks: this runs on every access, and IntFlag arithmetic is slow.
        if not r.cr0 & _CR0_PE:
            return CpuMode.REAL
        if not r.efer & _EFER_LMA:
            return CpuMode.PROTECTED
        return CpuMode.LONG64 if r.cs_l else CpuMode.COMPAT

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

    # -- control registers (spec §1.8; SDM Vol. 3A §2.5, Vol. 2 MOV CR) ------------------------------
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

    def _gp(self, detail: str) -> None:
        self.raise_fault(GeneralProtection(Reason.REGISTER, detail))

    def _privileged(self, what: str) -> bool:
        """MOV to a control register, LIDT and INVLPG need CPL 0 (SDM Vol. 2: #GP(0) otherwise)."""
        if self.regs.cpl:
            self._gp(f"{what} at CPL {self.regs.cpl}")
            return False
        return True

    def write_cr0(self, value: int) -> None:
        if not self._privileged("MOV to CR0"):
            return
        r, old = self.regs, self.regs.cr0
        value = int(value) | int(Cr0.ET)  # a plain int: IntFlag arithmetic on every access is slow
        if value & CR0_RESERVED:
            return self._gp(f"CR0 reserved bits {value & CR0_RESERVED:#x}")
        if value & Cr0.PG and not value & Cr0.PE:
            return self._gp("CR0.PG=1 with CR0.PE=0")
        if value & Cr0.NW and not value & Cr0.CD:
            return self._gp("CR0.NW=1 with CR0.CD=0")
        turning_off = old & Cr0.PG and not value & Cr0.PG
        turning_on = value & Cr0.PG and not old & Cr0.PG
        if turning_off and self.mode is CpuMode.LONG64:
            return self._gp("clearing CR0.PG in 64-bit mode")
        if turning_off and r.cr4 & Cr4.PCIDE:
            return self._gp("clearing CR0.PG with CR4.PCIDE=1")
        if turning_on and r.efer & Efer.LME:
            if not r.cr4 & Cr4.PAE:
                return self._gp("enabling IA-32e paging with CR4.PAE=0")
            if r.cs_l:
                return self._gp("activating IA-32e mode from a 64-bit code segment")
        if turning_on and not r.efer & Efer.LME and r.cr4 & Cr4.PAE:
            self._load_pdptes(r.cr3)
        before = self.mode
        r.cr0 = value
        if turning_on and r.efer & Efer.LME:
            r.efer |= int(Efer.LMA)
        if turning_off:
            r.efer &= ~int(Efer.LMA)
        if self.mode is not before:
            self.trace.emit(ModeChange(self.mode.value))
        self._cr_changed("cr0", old, value)
        if turning_on or turning_off:
            self._flush(include_global=True)

    def write_cr3(self, value: int) -> None:
        if not self._privileged("MOV to CR3"):
            return
        r, old = self.regs, self.regs.cr3
        no_flush = False
        if self.mode is not CpuMode.LONG64:
            value &= 0xFFFF_FFFF  # MOV CR3 outside 64-bit mode is 32-bit (spec §1.8)
        elif r.cr4 & Cr4.PCIDE and value >> 63:
            no_flush = True
            value &= ~(1 << 63)
        if self.mode is CpuMode.LONG64 and value & mask(63, self.features.maxphyaddr):
            return self._gp(f"CR3 reserved bits {value & mask(63, self.features.maxphyaddr):#x}")
        if r.cr0 & Cr0.PG and r.cr4 & Cr4.PAE and not r.efer & Efer.LMA:
            self._load_pdptes(value)
        r.cr3 = value
        self._cr_changed("cr3", old, value)
        if not no_flush:
            self._flush(include_global=False, pcid=self.mmu.pcid if r.cr4 & Cr4.PCIDE else None)

    def write_cr4(self, value: int) -> None:
        if not self._privileged("MOV to CR4"):
            return
        r, f, old = self.regs, self.features, self.regs.cr4
        if value & CR4_RESERVED:
            return self._gp(f"CR4 reserved bits {value & CR4_RESERVED:#x}")
        unsupported = [(Cr4.LA57, f.la57), (Cr4.PGE, f.pge), (Cr4.SMEP, f.smep), (Cr4.SMAP, f.smap),
                       (Cr4.PKE, f.pku), (Cr4.PKS, f.pks), (Cr4.PCIDE, f.pcid), (Cr4.PSE, f.pse)]
        for bit, ok in unsupported:
            if value & bit and not ok:
                return self._gp(f"CR4.{bit.name} not supported by this CPU")
        lma = r.efer & Efer.LMA
        if lma and (value ^ old) & Cr4.LA57:
            return self._gp("changing CR4.LA57 while IA-32e mode is active")
        if lma and not value & Cr4.PAE:
            return self._gp("clearing CR4.PAE while IA-32e mode is active")
        if value & Cr4.PCIDE and not old & Cr4.PCIDE and (not lma or r.cr3 & 0xFFF):
            return self._gp("setting CR4.PCIDE needs IA-32e mode and CR3[11:0]=0")
        changed = value ^ old
        if r.cr0 & Cr0.PG and not lma and value & Cr4.PAE and changed & (Cr4.PAE | Cr4.PGE | Cr4.PSE | Cr4.SMEP):
            self._load_pdptes(r.cr3)
        r.cr4 = int(value)
        self._cr_changed("cr4", old, value)
        # PGE changes and clearing PCIDE flush everything; changing PAE/PSE or setting SMEP flushes the
        # current PCID's entries, which with PCIDE=0 means everything too (spec §1.9).
        if changed & Cr4.PGE or (old & Cr4.PCIDE and not value & Cr4.PCIDE):
            self._flush(include_global=True)
        elif changed & (Cr4.PAE | Cr4.PSE) or (value & ~old & Cr4.SMEP):
            if value & Cr4.PCIDE:
                self._flush(include_global=False, pcid=self.mmu.pcid)
            else:
                self._flush(include_global=True)

    def write_efer(self, value: int) -> None:
        if not self._privileged("WRMSR"):
            return
        r, old = self.regs, self.regs.efer
        if value & EFER_RESERVED:
            return self._gp(f"EFER reserved bits {value & EFER_RESERVED:#x}")
        if value & Efer.NXE and not self.features.nx:
            return self._gp("EFER.NXE on a CPU without NX")
        if (value ^ old) & Efer.LME and r.cr0 & Cr0.PG:
            return self._gp("changing EFER.LME with paging enabled")
        value = (value & ~int(Efer.LMA)) | (old & Efer.LMA)  # LMA is read-only
        r.efer = int(value)
        self._cr_changed("efer", old, value)

    def _load_pdptes(self, cr3: int) -> None:
        base = cr3 & mask(31, 5)
        ptes = tuple(self.mem.read_u64(base + 8 * i) for i in range(4))
        bad = pdpte_reserved(self.features.maxphyaddr)
        for i, e in enumerate(ptes):
            if e & 1 and e & bad:
                return self._gp(f"PDPTE{i} {e:#x} has reserved bits {e & bad:#x}")
        self.regs.pdptes = (ptes[0], ptes[1], ptes[2], ptes[3])

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
