"""The control registers and the rules for writing them: MOV to CR0/CR3/CR4 and WRMSR to EFER (spec §1.8;
SDM Vol. 3A §2.5, Vol. 2 "MOV—Move to/from Control Registers", §4.4.1 for PAE's PDPTE registers).

This is the part of the CPU that decides whether a register value is allowed and which state it changes.
What a refused write does and what a write sets off are hooks: here a refusal raises ``RegisterRefused``
and nothing else happens, so the inspection tools can check register values the way the CPU does without
a TLB, exception delivery or an event stream; ``Cpu`` overrides the hooks to deliver #GP, reload the MMU,
flush the TLB and record events.
"""

from __future__ import annotations

from earlymm.arch.entry import mask, pdpte_reserved
from earlymm.arch.flags import CR0_RESERVED, CR4_RESERVED, EFER_RESERVED, Cr0, Cr4, Efer
from earlymm.arch.modes import Features
from earlymm.hw.memory import PhysMem
from earlymm.hw.regs import ControlRegs, CpuMode

_CR0_PE = int(Cr0.PE)
_EFER_LMA = int(Efer.LMA)


class RegisterRefused(ValueError):
    """A register write the CPU answers with #GP (the message says why)."""


class ControlRegisterFile:
    """CR0/CR3/CR4/EFER over ``regs``, written only through the SDM's checks. ``mem`` is read for PAE's
    PDPTE registers."""

    def __init__(self, mem: PhysMem, features: Features, regs: ControlRegs | None = None) -> None:
        self.mem = mem
        self.features = features
        self.regs = regs if regs is not None else ControlRegs()

    # -- hooks (``Cpu`` overrides them) ----------------------------------------------------------------
    def _gp(self, detail: str) -> None:
        raise RegisterRefused(detail)

    def _mode_changed(self) -> None:
        """CR0/EFER changed the operating mode (``self.mode``)."""

    def _cr_changed(self, reg: str, old: int, new: int) -> None:
        """``reg`` now holds ``new``."""

    def _flush(self, *, include_global: bool, pcid: int | None = None) -> None:
        """The write invalidates TLB entries: all of them, or the non-global ones (of ``pcid``)."""

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
    def pcid(self) -> int:
        """The current PCID (0 unless CR4.PCIDE)."""
        r = self.regs
        return r.cr3 & 0xFFF if r.cr4 & Cr4.PCIDE else 0

    def _privileged(self, what: str) -> bool:
        """MOV to a control register, LIDT and INVLPG need CPL 0 (SDM Vol. 2: #GP(0) otherwise)."""
        if self.regs.cpl:
            self._gp(f"{what} at CPL {self.regs.cpl}")
            return False
        return True

    # -- control registers (spec §1.8; SDM Vol. 3A §2.5, Vol. 2 MOV CR) ------------------------------
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
            self._mode_changed()
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
            self._flush(include_global=False, pcid=self.pcid if r.cr4 & Cr4.PCIDE else None)

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
                self._flush(include_global=False, pcid=self.pcid)
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
