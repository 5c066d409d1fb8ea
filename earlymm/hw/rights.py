"""Access rights (SDM Vol. 3A §4.6, spec §1.5), protection keys (§4.6.2) and the #PF error code (§4.7),
shared by the walk, the TLB-hit path and the tools."""

from __future__ import annotations

from earlymm.hw.faults import Reason
from earlymm.hw.plan import WalkPlan


def check_rights(plan: WalkPlan, kind: int, user: bool, implicit: bool, ac: bool,
                 user_page: bool, writable: bool, xd: bool, pkey: int, pkru: int, pkrs: int
                 ) -> Reason | None:
    """SDM Vol. 3A §4.6 access rights, then §4.6.2 protection keys (spec §1.5). ``None``: allowed."""
    if kind == 2:
        if xd:
            return Reason.NX
        if user:
            return None if user_page else Reason.USER_SUPERVISOR
        return Reason.SMEP if user_page and plan.smep else None
    if user:
        if not user_page:
            return Reason.USER_SUPERVISOR
        if kind == 1 and not writable:
            return Reason.READ_ONLY
    else:
        if user_page and plan.smap and (implicit or not ac):
            return Reason.SMAP
        if kind == 1 and not writable and plan.wp:
            return Reason.READ_ONLY
    return pk_violation(plan, kind, user, user_page, pkey, pkru, pkrs)


def pk_violation(plan: WalkPlan, kind: int, user: bool, user_page: bool, pkey: int, pkru: int, pkrs: int
                 ) -> Reason | None:
    """What the page's protection key says of this data access (SDM §4.6.2). The #PF error code's PK
    bit follows from the key alone (SDM §4.7), even when another rule refused the access first."""
    if kind == 2:
        return None
    if user_page and plan.pke:
        bits = pkru >> (2 * pkey)
    elif not user_page and plan.pks:
        bits = pkrs >> (2 * pkey)
    else:
        return None
    if bits & 1:
        return Reason.PK_ACCESS
    if kind == 1 and bits & 2 and (user or plan.wp):
        return Reason.PK_WRITE
    return None


def error_code_for(plan: WalkPlan, kind: int, user: bool, why: Reason) -> int:
    """The #PF error code (spec §1.7) for a walk that failed for ``why``."""
    code = (2 if kind == 1 else 0) | (4 if user else 0) | (16 if kind == 2 and plan.id_reported else 0)
    if why is Reason.NOT_PRESENT:
        return code
    if why is Reason.RESERVED:
        return code | 9
    if why is Reason.PK_ACCESS or why is Reason.PK_WRITE:
        return code | 0x21
    return code | 1
