"""What QEMU's monitor command ``gva2gpa`` answers: a walk with no permission checks.

Model of ``x86_cpu_get_phys_page_attrs_debug()`` (target/i386/helper.c @ QEMU v7.2.0) as
``hmp_gva2gpa()`` (monitor/misc.c) calls it, on the page of the address, adding the page offset after:

* paging off: the address itself (bits 51:0);
* IA-32e (EFER.LMA): a non-canonical address is unmapped; then PML5E (with CR4.LA57), PML4E, PDPTE,
  PDE, PTE, each needing only its present bit; PS selects a 1 GiB page in a PDPTE and a 2 MiB page in
  a PDE (whatever CPUID says about 1 GiB pages);
* PAE: the PDPTE read from memory at CR3[31:5] (not the PDPTE registers), then as above;
* 32-bit: PDE, then a 4 MiB page if PS and CR4.PSE (with PSE-36's bits 39:32), else the PTE.

No reserved-bit, U/S, R/W, NX, SMEP/SMAP or protection-key check, and no A/D write. Every address is
masked with PG_ADDRESS_MASK (bits 51:12). Differences: A20 is taken as enabled, and memory an image
lacks is reported unreadable (QEMU reads unassigned memory as zeros) unless the caller reads it as zeros.
The levels come from ``tool_semantics("gva2gpa", …)``, the enumerator's data-driven description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earlymm.arch.addr import is_canonical
from earlymm.arch.entry import mask
from earlymm.arch.modes import PagingMode
from earlymm.hw.memory import PhysMem
from earlymm.tools.ptdump.engine import read_table
from earlymm.tools.ptdump.semantics import Semantics

PG_ADDRESS_MASK = mask(51, 12)
PHYS_MASK = mask(51, 0)


@dataclass(frozen=True, slots=True)
class Step:
    level: str  # SDM name of the entry read: PML4E, PDE, …
    table: int
    index: int
    entry: int | None  # None: the table is not in the image


@dataclass(frozen=True, slots=True)
class Answer:
    va: int
    pa: int | None  # None: unmapped, or unreadable when ``unreadable`` is set
    page_size: int | None
    steps: tuple[Step, ...]
    unreadable: int | None = None  # address of a table the image lacks

    def reply(self) -> str:
        """QEMU's words: ``gpa: 0x…`` (C's ``%#x``, so zero is ``gpa: 0``) or ``Unmapped``."""
        if self.unreadable is not None:
            return f"unreadable: the table at {self.unreadable:#x} is not in the image (try --absent zero)"
        if self.pa is None:
            return "Unmapped"
        return "gpa: 0" if self.pa == 0 else f"gpa: {self.pa:#x}"


def root_of(mode: PagingMode, cr3: int) -> int:
    """The top table's address as the debug walk computes it."""
    if mode is PagingMode.LEGACY32:
        return cr3 & 0xFFFF_F000
    if mode is PagingMode.PAE:
        return cr3 & 0xFFFF_FFE0
    return cr3 & PG_ADDRESS_MASK


def gva2gpa(mem: PhysMem, sem: Semantics | None, root: int, va: int) -> Answer:
    """The answer for ``va`` (``sem`` None: paging is disabled)."""
    if sem is None:
        return Answer(va, va & PHYS_MASK, 1 << 12, ())
    v = va
    if sem.mode.is_ia32e:
        if not is_canonical(va, sem.va_bits):
            return Answer(va, None, None, ())
    else:
        v &= 0xFFFF_FFFF  # the legacy walks index with bits 31:0 only
    steps: list[Step] = []
    addr = root
    last = len(sem.rows) - 1
    for depth, row in enumerate(sem.rows):
        idx = (v >> row.shift) & (row.entries - 1)
        q = read_table(mem, row, addr)
        name = row.level.entry_name
        if q is None:
            steps.append(Step(name, addr, idx, None))
            return Answer(va, None, None, tuple(steps), unreadable=addr)
        e = int(q[idx])
        steps.append(Step(name, addr, idx, e))
        if not e & 1:
            return Answer(va, None, None, tuple(steps))
        if depth == last or e & row.leafsel:
            size = row.lsize
            return Answer(va, sem.leaf_pa(row, e) | (v & (size - 1)), size, tuple(steps))
        addr = e & row.taddr
    raise AssertionError("the last level always ends the walk")


def to_json(a: Answer, mode: PagingMode) -> dict[str, Any]:
    return {
        "va": f"{a.va:#x}", "ok": a.pa is not None, "pa": None if a.pa is None else f"{a.pa:#x}",
        "page_size": None if a.page_size is None else f"{a.page_size:#x}", "mode": mode.value,
        "reply": a.reply(), "unreadable": None if a.unreadable is None else f"{a.unreadable:#x}",
        "levels": [{"level": s.level, "table": f"{s.table:#x}", "index": f"{s.index:#x}",
                    "entry": None if s.entry is None else f"{s.entry:#x}"} for s in a.steps],
        "checks": False,
    }


def to_text(a: Answer) -> str:
    """``VA<TAB>reply``: the layout of the capture tool's ``gva2gpa.txt``."""
    return f"{a.va:#x}\t{a.reply()}"
