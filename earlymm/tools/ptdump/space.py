"""An address space to dump: physical memory, the paging mode from the registers, and the top table.

The registers go through the simulated CPU's own rules (``machine_view.check_registers``), so values real
hardware would refuse are refused here with the SDM's reason. Nothing is written to memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.arch.entry import mask
from earlymm.arch.modes import Features, PagingMode
from earlymm.hw.memory import FrameSource, PhysMem
from earlymm.hw.plan import WalkPlan, compile_plan
from earlymm.tools.machine_view import SetupError, check_registers
from earlymm.tools.ptdump.engine import DEFAULT_MAX_TABLES, Tree, build
from earlymm.tools.ptdump.semantics import Reading, Semantics, arch_semantics, tool_semantics

PTI_USER_BIT = 1 << 12  # PTI_USER_PGTABLE_MASK: the user PGD is the page after the 8 KiB-aligned kernel PGD


@dataclass(frozen=True, slots=True)
class Space:
    """One address space: (cr0, cr3, cr4, efer) over ``mem``."""

    mem: PhysMem
    cr0: int
    cr3: int
    cr4: int
    efer: int
    plan: WalkPlan
    features: Features

    @property
    def mode(self) -> PagingMode:
        return self.plan.mode

    def root(self, reading: Reading) -> int:
        """Address of the top table: what the CPU uses, or what QEMU/Linux compute from CR3."""
        m = self.mode
        if m is PagingMode.LEGACY32:
            return self.cr3 & mask(31, 12)
        if m is PagingMode.PAE:
            return self.cr3 & (mask(31, 5) if reading == "arch" else mask(63, 5))
        if reading == "qemu":
            return self.cr3 & 0x3_FFFF_FFFF_F000
        if reading == "linux":
            return self.cr3 & mask(51, 12)
        return self.cr3 & mask(self.features.maxphyaddr - 1, 12)

    def semantics(self, reading: Reading) -> Semantics:
        if reading == "arch":
            return arch_semantics(self.plan)
        return tool_semantics(reading, self.mode, self.cr4, self.plan.nxe)

    def tree(self, reading: Reading, *, keep_nonpresent: bool = False, max_tables: int = DEFAULT_MAX_TABLES
             ) -> Tree:
        return build(self.mem, self.semantics(reading), self.root(reading), keep_nonpresent=keep_nonpresent,
                     max_tables=max_tables)

    def with_cr3(self, cr3: int) -> Space:
        return Space(self.mem, self.cr0, cr3, self.cr4, self.efer, self.plan, self.features)


def open_space(source: FrameSource, regs: tuple[int, int, int, int], features: Features, *,
               absent_zero: bool = False) -> Space:
    """Check the registers like the CPU would and describe the space. Raises ``SetupError``.
    ``absent_zero``: memory the image lacks reads as zeros instead of being reported unreadable."""
    mem = PhysMem(source, absent_zero=absent_zero)
    # The CPU reads memory at the CR3 write only for PAE's PDPTE registers; reading a hole as zeros
    # there lets the dump itself report the unreadable PDPT.
    r = check_registers(source, regs, features, absent_zero=True).regs
    plan = compile_plan(r.cr0, r.cr4, r.efer, features)  # the plan the CPU's MMU would walk with
    if plan.mode is PagingMode.DISABLED:
        if regs[0] >> 31:
            raise SetupError("paging could not be enabled with these register values")
        raise SetupError("CR0.PG is clear: paging is disabled, so there are no page tables to dump")
    cr0, cr3, cr4, efer = regs
    return Space(mem, cr0, cr3, cr4, efer, plan, features)
