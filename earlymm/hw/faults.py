"""Faults as values below the CPU, exceptions only to unwind guest code (design §7.4 rule 4)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

PF_VECTOR = 14
GP_VECTOR = 13
DF_VECTOR = 8
# Vectors that push an error code: Linux's EXCEPTION_ERRCODE_MASK 0x27d00 (spec §1.7).
ERRCODE_VECTORS = frozenset(v for v in range(32) if 0x27D00 >> v & 1)


class Reason(enum.Enum):
    """Why a walk or a register write failed, in words a user can act on."""

    NOT_PRESENT = "entry not present"
    RESERVED = "reserved bit set in a present entry"
    USER_SUPERVISOR = "user-mode access to a supervisor page"
    READ_ONLY = "write to a read-only page"
    NX = "instruction fetch from an execute-disabled page"
    SMEP = "supervisor fetch from a user page with CR4.SMEP=1"
    SMAP = "supervisor data access to a user page with CR4.SMAP=1"
    PK_ACCESS = "protection key forbids access (AD=1)"
    PK_WRITE = "protection key forbids writes (WD=1)"
    NONCANONICAL = "non-canonical address"
    HOLE = "page-table read hit memory the image does not hold"
    REGISTER = "illegal control-register value"


@dataclass(frozen=True, slots=True)
class PageFault:
    """#PF: the error code (spec §1.7), CR2 and why."""

    error_code: int
    cr2: int
    reason: Reason
    vector: int = PF_VECTOR


@dataclass(frozen=True, slots=True)
class GeneralProtection:
    """#GP: a non-canonical address or an illegal register value."""

    reason: Reason
    detail: str = ""
    error_code: int = 0
    vector: int = GP_VECTOR


@dataclass(frozen=True, slots=True)
class Exception_:
    """Any other exception vector raised by guest code (e.g. #UD, #DE) or by delivery (#DF)."""

    vector: int
    error_code: int = 0
    detail: str = ""


Fault = PageFault | GeneralProtection | Exception_

VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
                10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM"}


def describe(fault: Fault) -> str:
    """A fault in words, as a report shows it: ``#PF at 0x… (error 0x2: entry not present)``,
    ``#GP(0): CR4.PGE not supported by this CPU``."""
    name = VECTOR_NAMES.get(fault.vector, f"vector {fault.vector}")
    if isinstance(fault, PageFault):
        return f"#PF at {fault.cr2:#x} (error {fault.error_code:#x}: {fault.reason.value})"
    if isinstance(fault, GeneralProtection):
        return f"#GP({fault.error_code}): {fault.detail or fault.reason.value}"
    return f"{name}({fault.error_code})" + (f": {fault.detail}" if fault.detail else "")


class CpuException(Exception):
    """Carries an undelivered fault out of guest Python code."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(repr(fault))
        self.fault = fault


class AccessEmulated(Exception):
    """Raised by a delivery that performed the faulting access itself (a hypervisor emulating a guest's
    write to a page-table page): the CPU does not retry the access, it is complete."""


class SimulationError(Exception):
    """The simulated machine stopped: a reset, a livelock, a halt. ``events`` are the last ones seen."""

    outcome = "error"

    def __init__(self, reason: str, events: list[object] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.events = events or []


class TripleFault(SimulationError):
    outcome = "triple_fault"


class Livelock(SimulationError):
    outcome = "livelock"


class Halt(SimulationError):
    """The guest halted (``hlt`` with interrupts off) or spins (``jmp .``): it will never continue."""

    def __init__(self, reason: str, outcome: str = "halt", console: str = "",
                 events: list[object] | None = None) -> None:
        super().__init__(reason, events)
        self.outcome = outcome
        self.console = console
