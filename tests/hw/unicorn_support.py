"""Helpers shared by the Unicorn differential tests (test_unicorn_diff.py, test_unicorn_alias.py): the
named QEMU quirk, model memory holding the harness, and the comparison of one access's outcome and of
the table pool afterwards."""

from __future__ import annotations

from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import GP, OK, PF, WalkResult
from tests import reference as ref
from tests.unicorn_harness import CR2_SENTINEL, MAXPHYADDR, UcOutcome, harness_frames

# -- the named QEMU quirk ----------------------------------------------------------------------------


def qemu_1g_leaf_accessed_early(mode: str, result: WalkResult, nxe: bool) -> int | None:
    """QEMU_1G_LEAF_ACCESSED_EARLY: if this faulting walk stopped at a present 1 GiB PDPTE leaf after
    QEMU's early PDPTE checks (P, bits 51:M, XD-with-NXE=0), return the PDPTE's address: QEMU has set
    its A bit although the walk faults. None otherwise."""
    if result.outcome != PF:
        return None
    pdpt_level = 1 if mode == "4" else 2
    if result.first + len(result.path) // 2 != pdpt_level + 1:
        return None  # the walk did not stop at the PDPTE
    e = result.path[-1]
    early_rsvd = ref.bits(51, MAXPHYADDR) | (0 if nxe else ref.BIT_XD)
    if not e & ref.BIT_P or not e & ref.BIT_PS or e & early_rsvd or e & ref.BIT_A:
        return None
    table = result.path[-2]
    return table + ((result.va >> 30) & 0x1FF) * 8


# -- comparing one access ---------------------------------------------------------------------------


def load_model_memory(frames: dict[int, bytearray]) -> PhysMem:
    mem = PhysMem()
    for pa, data in harness_frames().items():
        mem.write(pa, data)
    for pa, f in frames.items():
        mem.write(pa, bytes(f))
    return mem


def outcome_key(u: UcOutcome) -> str:
    if u.vector is None:
        return "ok"
    if u.vector == 14:
        return "#PF rsvd" if u.error_code & 8 else ("#PF prot" if u.error_code & 1 else "#PF np")
    return f"vector {u.vector}"


def compare_outcome(u: UcOutcome, outcome: int | str, pa: int, err: int, va: int) -> str | None:
    """Unicorn's outcome against an expected (outcome, pa, error code); outcome in earlymm's or the
    reference's vocabulary."""
    if outcome in (OK, ref.OK):
        if u.vector is not None or u.pa != pa or u.cr2 != CR2_SENTINEL:
            return f"expected ok pa={pa:#x}; unicorn {u.describe()}"
    elif outcome in (GP, ref.GP):
        if u.vector != 13 or u.cr2 != CR2_SENTINEL:
            return f"expected #GP with CR2 unchanged; unicorn {u.describe()}"
    elif u.vector != 14 or u.error_code != err or u.cr2 != va:
        return f"expected #PF err={err:#x} cr2={va:#x}; unicorn {u.describe()}"
    return None


def pool_diff(got: bytes, want: bytes, base: int) -> str | None:
    if got == want:
        return None
    out = []
    for off in range(0, len(got), 8):
        if got[off:off + 8] != want[off:off + 8]:
            g = int.from_bytes(got[off:off + 8], "little")
            w = int.from_bytes(want[off:off + 8], "little")
            out.append(f"{base + off:#x}: unicorn {g:#x} expected {w:#x}")
    return "table bytes differ: " + "; ".join(out[:4]) + (f" (+{len(out) - 4})" if len(out) > 4 else "")
