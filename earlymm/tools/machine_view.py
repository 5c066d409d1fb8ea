"""A CPU set up from an image's CPU note and/or explicit register values, for the inspection tools.

Registers are programmed in architectural order (EFER, CR4, CR3, CR0) through the CPU's own checks, so a
value that real hardware would refuse is refused here too, with the SDM's reason. A tool that only reads
tables (``ptdump``) checks them with ``check_registers``, the same rules without building a CPU: the CPU
module brings exception delivery, the TLB and the event stream, which such a tool's start-up need not pay for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.arch.modes import Features
from earlymm.hw.control import ControlRegisterFile, RegisterRefused
from earlymm.hw.memory import ZERO_FRAME, Buffer, FrameSource, PhysMem

if TYPE_CHECKING:
    from earlymm.hw.cpu import Cpu
    from earlymm.images import CpuState

DEFAULT_LONG_CR0 = Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.AM | Cr0.PG


class SetupError(ValueError):
    """Register values or options that cannot describe a machine."""


@dataclass
class RegOverrides:
    """Register values given on the command line (None: take the image's)."""

    cr0: int | None = None
    cr3: int | None = None
    cr4: int | None = None
    efer: int | None = None
    pkru: int | None = None
    pkrs: int | None = None


class ZeroFilled:
    """Frames the image lacks read as zeros — except frames it lost (a truncated core's cut-off tail),
    which stay unreadable: zeros there would be a guess, and audits must not pass on guesses."""

    def __init__(self, image: FrameSource, lost: Callable[[int], bool]) -> None:
        self.image = image
        self.lost = lost

    def frame(self, pfn: int) -> Buffer | None:
        f = self.image.frame(pfn)
        if f is None and not self.lost(pfn):
            return ZERO_FRAME
        return f

    def ranges(self) -> list[tuple[int, int]]:
        return self.image.ranges()


def image_source(image: Any, absent: str | None) -> tuple[FrameSource, bool]:
    """(frame source, absent_zero) for reading ``image``: ``absent`` is the user's ``--absent`` (None: what
    the image's EARLYMM note says, else "error")."""
    zero = bool(getattr(image, "absent_zero", False)) if absent is None else absent == "zero"
    lost = getattr(image, "is_lost", None)
    if zero and lost is not None:
        return ZeroFilled(image, lost), False
    source: FrameSource = image
    return source, zero


def infer_registers(cpu: CpuState | None, ov: RegOverrides) -> tuple[int, int, int, int]:
    """(cr0, cr3, cr4, efer): explicit values win, then the CPU note; EFER is inferred (QEMU omits it)."""
    if cpu is None and ov.cr3 is None:
        raise SetupError("the image has no CPU state: give --regs FILE (QEMU's info registers), or --cr3 (and "
                         "--cr4/--cr0/--efer if not 4-level)")
    cr0 = ov.cr0 if ov.cr0 is not None else (cpu.cr0 if cpu else int(DEFAULT_LONG_CR0))
    cr3 = ov.cr3 if ov.cr3 is not None else (cpu.cr3 if cpu else 0)
    cr4 = ov.cr4 if ov.cr4 is not None else (cpu.cr4 if cpu else int(Cr4.PAE | Cr4.PGE))
    if ov.efer is not None:
        efer = ov.efer
    else:
        # Long mode is active when paging with PAE runs 64-bit code (or, without a note, by default);
        # Linux enables NXE on every CPU that has NX, so default it on in long mode — and in legacy PAE
        # paging, where a PAE kernel's set_nx() does the same (a table without NX bits reads the same).
        pae = bool(cr0 & Cr0.PG and cr4 & Cr4.PAE)
        long_mode = pae and (cpu is None or cpu.is_64bit_code or bool(cpu.rip >> 63))
        efer = int(Efer.LME | Efer.LMA | Efer.NXE | Efer.SCE) if long_mode else int(Efer.NXE) if pae else 0
    return cr0, cr3, cr4, efer


def make_cpu(source: FrameSource, regs: tuple[int, int, int, int], features: Features, *,
             absent_zero: bool, tlb: bool = False, pkru: int = 0, pkrs: int = 0) -> Cpu:
    """A CPU over copy-on-write memory backed by ``source`` with the given (cr0, cr3, cr4, efer)."""
    from earlymm.hw.cpu import Cpu  # not at module level: ptdump's start-up needs only check_registers
    from earlymm.hw.faults import CpuException
    from earlymm.hw.tlb import Tlb

    cpu = Cpu(PhysMem(source, absent_zero=absent_zero), features, tlb=Tlb(enabled=tlb))
    try:
        _program(cpu, regs)
    except CpuException as e:
        raise SetupError(f"register values rejected by the CPU: {getattr(e.fault, 'detail', e.fault)}") from None
    cpu.regs.pkru, cpu.regs.pkrs = pkru, pkrs
    return cpu


def check_registers(source: FrameSource, regs: tuple[int, int, int, int], features: Features, *,
                    absent_zero: bool) -> ControlRegisterFile:
    """The registers (cr0, cr3, cr4, efer) programmed as ``make_cpu`` does, through the same rules, with no
    CPU around them: a refused value raises ``SetupError`` with the SDM's reason."""
    crs = ControlRegisterFile(PhysMem(source, absent_zero=absent_zero), features)
    try:
        _program(crs, regs)
    except RegisterRefused as e:
        raise SetupError(f"register values rejected by the CPU: {e}") from None
    return crs


def _program(crs: ControlRegisterFile, regs: tuple[int, int, int, int]) -> None:
    """Write (cr0, cr3, cr4, efer) in the order a kernel entering that mode would."""
    cr0, cr3, cr4, efer = regs
    lme = efer & (Efer.LME | Efer.LMA)
    crs.write_efer((efer & ~int(Efer.LMA)) | (Efer.LME if lme else 0))
    # PCIDE can only be set once IA-32e mode is active, with CR3[11:0] = 0 (spec §1.8).
    crs.write_cr4(cr4 & ~int(Cr4.PCIDE))
    crs.write_cr3(cr3 & 0xFFFF_FFFF if not (lme and cr0 & Cr0.PG) else 0)
    crs.write_cr0(cr0 & ~int(Cr0.PG) if lme else cr0)
    if lme and cr0 & Cr0.PG:
        crs.write_cr0(cr0)
        crs.regs.cs_l = True
        if cr4 & Cr4.PCIDE:
            crs.write_cr4(cr4)
        crs.write_cr3(cr3)
