"""What Xen and its dom0 printed on the serial console, read back: Xen's banner and e820, dom0's e820.

Xen's lines carry a ``(XEN) `` prefix: ``Xen version 4.17.7 (Debian …)``, and after ``Xen-e820 RAM map:``
one ``[start, end] (type)`` line per entry with an inclusive end (xen/arch/x86/e820.c print_e820_memory_map).
dom0's kernel prints the map ``xen_memory_setup`` built with the label ``Xen`` (``Xen: [mem …] usable``),
read by the mid-boot capture's e820 parser.
"""

from __future__ import annotations

import re

from earlymm.tools.midboot.bootinfo import E820Entry, console_e820

XEN_E820_RE = re.compile(r"^\(XEN\) +\[([0-9a-f]{16}), ([0-9a-f]{16})\] \((.+)\)$")


def xen_lines(console: str) -> list[str]:
    return [ln[6:] for ln in console.replace("\r", "").split("\n") if ln.startswith("(XEN) ")]


def xen_banner(console: str) -> str:
    return next((ln for ln in xen_lines(console) if ln.startswith("Xen version ")), "")


def xen_e820(console: str) -> list[E820Entry]:
    """The host map Xen printed (``Xen-e820 RAM map:``), ends made exclusive."""
    out: list[E820Entry] = []
    lines = console.replace("\r", "").split("\n")
    try:
        i = next(k for k, ln in enumerate(lines) if ln.rstrip().endswith("Xen-e820 RAM map:"))
    except StopIteration:
        raise ValueError("the console has no 'Xen-e820 RAM map:' block") from None
    for ln in lines[i + 1:]:
        m = XEN_E820_RE.match(ln.rstrip())
        if m is None:
            break
        out.append(E820Entry(int(m[1], 16), int(m[2], 16) + 1, m[3]))
    return out


def dom0_e820(console: str) -> list[E820Entry]:
    """The map dom0's ``xen_memory_setup`` handed to the kernel (``Xen: [mem …]`` lines)."""
    tables = console_e820(console)
    if not tables.get("Xen"):
        raise ValueError("the console has no 'Xen: [mem …]' e820 lines from dom0 (was earlyprintk=xen given?)")
    return tables["Xen"]
