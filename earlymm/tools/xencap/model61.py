"""The model's 6.1 dom0 at a stop, in the terms a capture is read in: the tables by machine frame, the
vCPU's registers, the p2m list the guest keeps at that moment and the kernel variables a capture records.

The counterpart of ``fixture.XenStop`` for the model, so the same ``GuestView`` and checks read both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earlymm.arch.modes import Features
from earlymm.hw.memory import Region
from earlymm.kernel.xen61.boot import boot_61
from earlymm.kernel.xen61.guest import Xen61Guest
from earlymm.platform.xen.dom0_build import Dom0
from earlymm.platform.xen.host417 import Dom0Machine, start_dom0
from earlymm.tools.xencap.guest import GuestView
from earlymm.tools.xencap.p2m import P2m


@dataclass
class ModelStop:
    machine: Dom0Machine
    guest: Xen61Guest
    until: str

    @property
    def regs(self) -> tuple[int, int, int, int]:
        r = self.machine.cpu.regs
        return r.cr0, r.cr3, r.cr4, r.efer

    def p2m(self) -> P2m:
        """The list as the guest has it now (``start_info``'s before ``xen_build_dynamic_phys_to_machine``),
        read through the guest's own mapping."""
        g = self.guest
        va, n = (g.p2m_addr, g.p2m_size) if g.p2m_addr else (g.si.mfn_list, g.si.nr_pages)
        raw = self.machine.cpu.read(va, 8 * n)
        return P2m(np.frombuffer(raw, dtype="<u8").astype(np.uint64), va)

    def view(self) -> GuestView:
        d = self.machine.dom0
        return GuestView(d.mem, self.regs, self.machine.cpu.features, self.p2m(), d.shared_info >> 12)

    def variables(self) -> dict[str, int]:
        """The kernel variables a capture records (``xencap`` reads them by symbol at the stop)."""
        g = self.guest
        if self.until == "xen_start_kernel":
            return dict.fromkeys(("xen_start_info", "xen_p2m_addr", "xen_p2m_size", "xen_max_p2m_pfn",
                                  "xen_released_pages", "max_pfn", "max_pfn_mapped"), 0)
        return {"xen_start_info": g.si_va, "xen_p2m_addr": g.p2m_addr, "xen_p2m_size": g.p2m_size,
                "xen_max_p2m_pfn": g.max_p2m_pfn, "xen_released_pages": g.released_pages, "max_pfn": g.max_pfn,
                "max_pfn_mapped": g.max_pfn_mapped}

    def table_frames(self) -> list[tuple[int, bytes]]:
        d = self.machine.dom0
        return [(m, d.mem.read(m << 12, 4096)) for m in sorted(self.view().table_mfns)]


def run_dom0(d: Dom0, e820: list[Region], features: Features, symbols: dict[str, int], until: str) -> ModelStop:
    """Xen starts the built dom0; the 6.1 guest runs to ``until`` (``kernel.xen61.boot.STOPS``)."""
    m = start_dom0(d, e820, features)
    return ModelStop(m, boot_61(m, symbols, until), until)
