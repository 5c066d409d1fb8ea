"""The control-register rules without a CPU (``hw.control``, what ``ptdump`` checks registers with) answer
exactly as the CPU does: the same values accepted with the same resulting registers and walk plan, the same
values refused for the same reason. Which values must be refused is the SDM's (Vol. 2, MOV to CR; Vol. 3A
§4.4.1 for PAE's PDPTEs): each case names the rule it breaks; the CR4 bits come from ``tests.reference``."""

from __future__ import annotations

import pytest

from earlymm.arch.modes import Features
from earlymm.hw.memory import PhysMem
from earlymm.hw.plan import compile_plan
from earlymm.tools.machine_view import SetupError, check_registers, make_cpu
from tests import reference as ref

LONG_CR0 = 0x8005_0033  # PG WP NE ET MP PE
LONG_EFER = 0xD01  # LME LMA NXE SCE
PDPT = 0x3000

CASES = [  # (cr0, cr3, cr4, efer), features, a fragment of the refusal (None: accepted)
    ((LONG_CR0, 0x1000, ref.CR4_PAE | ref.CR4_PGE, LONG_EFER), Features(), None),
    ((LONG_CR0, 0x1000, ref.CR4_PAE | ref.CR4_LA57, LONG_EFER), Features(), None),
    ((LONG_CR0, 0x1000, ref.CR4_PAE | ref.CR4_LA57, LONG_EFER), Features(la57=False), "LA57 not supported"),
    ((LONG_CR0, 0x1005, ref.CR4_PAE | ref.CR4_PCIDE, LONG_EFER), Features(), None),
    ((LONG_CR0, 1 << 52 | 0x1000, ref.CR4_PAE, LONG_EFER), Features(maxphyaddr=46), "CR3 reserved bits"),
    ((LONG_CR0, 0x1000, ref.CR4_PAE | 1 << 31, LONG_EFER), Features(), "CR4 reserved bits"),
    ((LONG_CR0, 0x1000, ref.CR4_PAE, LONG_EFER), Features(nx=False), "NXE on a CPU without NX"),
    ((LONG_CR0, 0x1000, 0, LONG_EFER), Features(), "IA-32e paging with CR4.PAE=0"),
    ((0x8000_0010, 0x1000, 0, 0), Features(), "CR0.PG=1 with CR0.PE=0"),
    ((0x8000_0011, PDPT, ref.CR4_PAE, 0x800), Features(), None),  # legacy PAE, valid PDPTEs
    ((0x8000_0011, PDPT + 0x20, ref.CR4_PAE, 0x800), Features(), "PDPTE0"),  # a PDPTE with reserved bits
    ((0x8000_0011, 0x1000, 0x10, 0), Features(), None),  # 32-bit paging with PSE
]


def _memory() -> PhysMem:
    mem = PhysMem()
    mem.write_u64(PDPT, 0x5001)  # a valid present PDPTE
    mem.write_u64(PDPT + 0x20, 0x5001 | 1 << 1)  # RW in a PAE PDPTE is reserved (SDM §4.4.1)
    return mem


@pytest.mark.parametrize("regs, features, refusal", CASES)
def test_the_rules_answer_as_the_cpu_does(regs: tuple[int, int, int, int], features: Features,
                                          refusal: str | None) -> None:
    outcomes = []
    for setup in (make_cpu, check_registers):
        try:
            r = setup(_memory(), regs, features, absent_zero=True).regs
            outcomes.append((r.cr0, r.cr3, r.cr4, r.efer, r.pdptes, compile_plan(r.cr0, r.cr4, r.efer, features)))
        except SetupError as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]
    if refusal is None:
        assert not isinstance(outcomes[1], str), outcomes[1]
    else:
        assert isinstance(outcomes[1], str) and refusal in outcomes[1], outcomes[1]
