"""The guest's call chain at the moment the machine stopped, in kernel function names — what a real
console's stack dump shows (``xen_get_user_pgd+0x5a`` ← ``xen_write_cr3+0x77`` ← …), without offsets.

The model's kernel functions carry Linux's names, so the chain is read off the Python frames between the
boot path and the access that stopped the machine: module-level functions of ``earlymm.kernel``, not the
helpers around them (methods such as ``ctx.rd`` or a backend's dispatch, private functions) and not the
boot-path drivers, which are the model's, not the kernel's.
"""

from __future__ import annotations

from types import TracebackType

_DRIVERS = ("earlymm.kernel.boot", "earlymm.kernel.boot_xen")


def guest_chain(tb: TracebackType | None) -> list[str]:
    """Innermost first: the kernel functions active when the exception carried by ``tb`` was raised."""
    names: list[str] = []
    while tb is not None:
        frame = tb.tb_frame
        module = str(frame.f_globals.get("__name__", ""))
        code = frame.f_code
        is_method = code.co_argcount > 0 and code.co_varnames[0] in ("self", "cls")
        name = code.co_name
        if (module.startswith("earlymm.kernel") and module not in _DRIVERS and not is_method
                and not (name.startswith("_") and not name.startswith("__")) and not name.startswith("<")):
            names.append(name)
        tb = tb.tb_next
    return names[::-1]
