"""Who made a store: the innermost kernel function on the model's call stack, which names Linux functions
one Python function each (the rule of ``kernel/backtrace.py``: module-level public functions of
``earlymm.kernel``, not methods, helpers or closures, not the boot drivers), the kernel-side seam the store
went through (``set_pmd``, ``memset``, a hypercall wrapper) and, under Xen PV, how the hypervisor committed
it."""

from __future__ import annotations

import sys
from types import CodeType, FrameType

_DRIVERS = frozenset({"earlymm.kernel.boot", "earlymm.kernel.boot_xen", "earlymm.kernel.i386.boot"})
# The kernel-side seam a store went through (innermost frame with one of these names).
_SEAMS = {"set_pte": "set_pte", "set_pmd": "set_pmd", "set_pud": "set_pud", "set_p4d": "set_p4d",
          "set_pgd": "set_pgd", "set_entries": "set_entries", "memset": "memset", "memcpy": "memcpy",
          "wr": "store", "write_idt_entry": "store"}
# How Xen committed it (innermost hypervisor frame with one of these names).
_XEN_OPS = {"_ptwr": "ptwr emulation", "mmu_update": "mmu_update", "mmu_update_each": "mmu_update",
            "update_va_mapping": "update_va_mapping", "alloc_table": "Xen pin validation",
            "mmuext_op": "mmuext_op"}


class Attribution:
    """Reads the stack; what each code object is to it is decided once (a boot has a few hundred)."""

    def __init__(self) -> None:
        self._roles: dict[CodeType, tuple[str, str]] = {}

    def who(self, depth: int = 2) -> tuple[str, str]:
        """The innermost kernel function on the stack, and the seam (and Xen operation) of the store."""
        f: FrameType | None = sys._getframe(depth)
        fn = seam = xen = ""
        roles = self._roles
        while f is not None:
            code = f.f_code
            role = roles.get(code)
            if role is None:
                role = roles[code] = _role(str(f.f_globals.get("__name__", "")), code)
            kind, value = role
            if kind == "xen":
                xen = xen or value
            elif kind == "seam" and not seam:
                seam = value
                if value == "set_entries":
                    seam = f"{getattr(f.f_locals.get('op'), 'value', 'set')} (run)"
            elif kind == "hypercall":
                seam = seam or value
            elif kind == "fn":
                fn = value
                break
            f = f.f_back
        if xen:
            return fn or "(none)", f"{seam} → {xen}" if seam else xen
        return fn or "(none)", seam or "store"



def _role(mod: str, code: CodeType) -> tuple[str, str]:
    """What a frame of this code is to ``who`` (decided once per code object)."""
    name = code.co_name
    if mod.startswith("earlymm.platform.xen"):
        return ("xen", _XEN_OPS[name]) if name in _XEN_OPS else ("", "")
    if not mod.startswith("earlymm.kernel"):
        return ("", "")
    if name.startswith("HYPERVISOR_"):
        return ("hypercall", name)
    if name in _SEAMS:
        return ("seam", _SEAMS[name])
    if mod not in _DRIVERS and _is_kernel_code(code):
        return ("fn", name)
    return ("", "")


def _is_kernel_code(code: CodeType) -> bool:
    name = code.co_name
    if code.co_argcount > 0 and code.co_varnames[0] in ("self", "cls"):
        return False
    if "<locals>" in getattr(code, "co_qualname", ""):  # a helper inside a kernel function (head_64.S's addq)
        return False
    return not (name.startswith("_") and not name.startswith("__")) and not name.startswith("<")
