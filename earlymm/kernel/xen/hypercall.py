"""The guest's hypercalls and multicall batches (arch/x86/include/asm/xen/hypercall.h, arch/x86/xen/
multicalls.c @ v3.9). A failed call the kernel checks is a ``BUG()``: the model panics with Xen's own
complaint attached, which is how such a failure reads on a real console (the guest's BUG and Xen's
``(XEN)`` line)."""

from __future__ import annotations

from typing import Any, NoReturn

from earlymm.hw.faults import Halt
from earlymm.kernel.context import KernelContext
from earlymm.kernel.xen.state import XenGuest
from earlymm.platform.xen.consts import MmuExt
from earlymm.platform.xen.hypervisor import Xen


def hv(ctx: KernelContext) -> Xen:
    xen: Xen = ctx.platform.xen  # type: ignore[attr-defined]
    return xen


def guest(ctx: KernelContext) -> XenGuest:
    g: XenGuest = ctx.xen
    return g


def BUG(ctx: KernelContext, where: str, why: str) -> NoReturn:
    said = next((line for line in reversed(hv(ctx).console) if "(XEN) d" in line), "")
    msg = f"kernel BUG at {where}! {why}" + (f" — {said}" if said else "")
    ctx.print(msg)
    raise Halt(msg, outcome="panic", console="\n".join(ctx.console))


def HYPERVISOR_mmu_update(ctx: KernelContext, reqs: list[tuple[int, int]]) -> int:
    rc, _done = hv(ctx).mmu_update(reqs)
    return rc


def HYPERVISOR_mmuext_op(ctx: KernelContext, ops: list[tuple[MmuExt, int]]) -> int:
    return hv(ctx).mmuext_op(ops)


def HYPERVISOR_update_va_mapping(ctx: KernelContext, va: int, val: int, flags: int) -> int:
    return hv(ctx).update_va_mapping(va, val, flags)


def HYPERVISOR_set_trap_table(ctx: KernelContext, entries: list[tuple[int, int, int]]) -> int:
    return hv(ctx).set_trap_table(entries)


# -- multicalls (xen_mc_batch / xen_mc_entry / xen_mc_issue) -------------------------------------------
def xen_mc_batch(ctx: KernelContext) -> None:
    """Open a batch (interrupts off); entries queue until ``xen_mc_issue``."""
    guest(ctx).mc = []


def xen_mc_entry(ctx: KernelContext, kind: str, args: Any) -> None:
    """Queue one call; consecutive ``mmu_update``s extend one call (``xen_extend_mmu_update``)."""
    mc = guest(ctx).mc
    if mc and mc[-1][0] == kind:
        mc[-1][1].extend(args)
    else:
        mc.append((kind, list(args)))


def xen_mc_issue(ctx: KernelContext) -> None:
    """``xen_mc_flush``: run the batch; any failed call is ``BUG_ON(ret)``."""
    g = guest(ctx)
    batch, g.mc = g.mc, []
    for kind, args in batch:
        rc = HYPERVISOR_mmu_update(ctx, args) if kind == "mmu_update" else HYPERVISOR_mmuext_op(ctx, args)
        if rc < 0:
            ctx.print(f"1 multicall(s) failed: cpu 0 ({kind}, rc {rc})")
            BUG(ctx, "arch/x86/xen/multicalls.c", f"a batched {kind} failed (rc {rc})")
