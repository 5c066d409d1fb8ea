"""Xen's start-of-day block: what the PV dom0 builder prints before it starts the guest.

Xen 4.17's ``dom0_construct_pv`` (xen/arch/x86/pv/dom0_build.c) prints, after ``*** Building a PV Dom0
***`` and the two ``Xen  kernel:``/``Dom0 kernel:`` lines of its ELF check::

    PHYSICAL MEMORY ARRANGEMENT:
     Dom0 alloc.:   0000000070000000->0000000078000000 (98052 pages to be allocated)
     Init. ramdisk: 000000007f904000->000000007f9ffea7
    VIRTUAL MEMORY ARRANGEMENT:
     Loaded kernel: ffffffff81000000->ffffffff84a00000
     Phys-Mach map: 0000008000000000->0000008000100000
     Start info:    ffffffff84a00000->ffffffff84a004b8
     Page tables:   ffffffff84a01000->ffffffff84a2a000
     Boot stack:    ffffffff84a2a000->ffffffff84a2b000
     TOTAL:         ffffffff80000000->ffffffff84c00000
     ENTRY ADDRESS: ffffffff830791c0

(each line behind ``(XEN) `` on the serial console). The ``(N pages to be allocated)`` tail and the
physical ``Init. ramdisk`` line are conditional; a virtual ``Init. ramdisk`` line appears when the
initrd is mapped into the guest's initial region (a kernel without ``XEN_ELFNOTE_MOD_START_PFN``).
``parse_start_of_day`` reads the block out of a console (with or without the ``(XEN) `` prefixes) so
that a model which prints the same block can be compared with the real one line by line and field by
field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BEGIN = "*** Building a PV Dom0 ***"
PREFIX_RE = re.compile(r"^\(XEN\) (?:\[[^\]]*\] )?")
RANGE_RE = re.compile(r"^ (Dom0 alloc\.|Init\. ramdisk|Loaded kernel|Phys-Mach map|Start info|Page tables|Boot stack"
                      r"|TOTAL): +([0-9a-f]{16})->([0-9a-f]{16})(?: \((\d+) pages to be allocated\))?$")
ENTRY_RE = re.compile(r"^ ENTRY ADDRESS: ([0-9a-f]{16})$")
KERNEL_RE = re.compile(r"^ (Xen  kernel|Dom0 kernel): (.*)$")
PADDR_RE = re.compile(r"paddr (0x[0-9a-f]+) -> (0x[0-9a-f]+)$")
PHYSICAL, VIRTUAL = "PHYSICAL MEMORY ARRANGEMENT:", "VIRTUAL MEMORY ARRANGEMENT:"
# names in the order Xen prints them
PHYSICAL_NAMES = ("Dom0 alloc.", "Init. ramdisk")
VIRTUAL_NAMES = ("Loaded kernel", "Init. ramdisk", "Phys-Mach map", "Start info", "Page tables", "Boot stack", "TOTAL")


class StartOfDayError(ValueError):
    """No block, or a line of it that is not what Xen prints."""


@dataclass(frozen=True)
class StartOfDay:
    lines: tuple[str, ...]  # from "PHYSICAL MEMORY ARRANGEMENT:" to "ENTRY ADDRESS", prefixes removed
    xen_kernel: str  # "64-bit, lsb"
    dom0_kernel: str  # "64-bit, PAE, lsb, paddr 0x1000000 -> 0x4a00000"
    physical: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → [start, end)
    virtual: dict[str, tuple[int, int]] = field(default_factory=dict)
    to_be_allocated: int | None = None  # the "(N pages to be allocated)" tail of Dom0 alloc.
    entry: int = 0

    @property
    def dom0_paddr(self) -> tuple[int, int] | None:
        """The kernel's physical load range from its ELF headers (the ``Dom0 kernel:`` line)."""
        m = PADDR_RE.search(self.dom0_kernel)
        return (int(m[1], 16), int(m[2], 16)) if m else None

    def frames(self, name: str) -> int:
        """4 KiB frames a virtual range covers (``Page tables`` → the builder's ``nr_pt_frames``)."""
        start, end = self.virtual[name]
        return (end - start + 0xFFF) >> 12

    def to_json(self) -> dict[str, object]:
        return {"lines": list(self.lines), "xen_kernel": self.xen_kernel, "dom0_kernel": self.dom0_kernel,
                "physical": {k: [f"{a:#x}", f"{b:#x}"] for k, (a, b) in self.physical.items()},
                "virtual": {k: [f"{a:#x}", f"{b:#x}"] for k, (a, b) in self.virtual.items()},
                "to_be_allocated": self.to_be_allocated, "entry": f"{self.entry:#x}"}


def _strip(line: str) -> str:
    return PREFIX_RE.sub("", line.rstrip("\r\n"), count=1)


def parse_start_of_day(console: str) -> StartOfDay:
    """The first start-of-day block in ``console``; ``StartOfDayError`` names what is missing or wrong."""
    text = [_strip(ln) for ln in console.replace("\r", "").split("\n")]
    try:
        i = text.index(BEGIN)
    except ValueError:
        raise StartOfDayError(f"no '{BEGIN}' line") from None
    kernels: dict[str, str] = {}
    j = i + 1
    while j < len(text) and text[j] != PHYSICAL:
        m = KERNEL_RE.match(text[j])
        if m:
            kernels[m[1]] = m[2]
        j += 1
    if j == len(text):
        raise StartOfDayError(f"no '{PHYSICAL}' line after '{BEGIN}'")
    physical: dict[str, tuple[int, int]] = {}
    virtual: dict[str, tuple[int, int]] = {}
    to_alloc: int | None = None
    section: dict[str, tuple[int, int]] | None = physical
    order: tuple[str, ...] = PHYSICAL_NAMES
    lines = [text[j]]
    for ln in text[j + 1:]:
        lines.append(ln)
        if ln == VIRTUAL and section is physical:
            section, order = virtual, VIRTUAL_NAMES
            continue
        m = ENTRY_RE.match(ln)
        if m:
            if section is not virtual:
                raise StartOfDayError("ENTRY ADDRESS before the virtual memory arrangement")
            missing = [n for n in VIRTUAL_NAMES if n not in virtual and n != "Init. ramdisk"]
            if missing or "Dom0 alloc." not in physical:
                raise StartOfDayError(f"start-of-day block lacks {', '.join(missing or ['Dom0 alloc.'])}")
            return StartOfDay(tuple(lines), kernels.get("Xen  kernel", ""), kernels.get("Dom0 kernel", ""),
                              physical, virtual, to_alloc, int(m[1], 16))
        m = RANGE_RE.match(ln)
        if m is None or section is None or m[1] not in order:
            raise StartOfDayError(f"unexpected line in the start-of-day block: {ln!r}")
        if m[1] in section or any(order.index(m[1]) < order.index(n) for n in section):
            raise StartOfDayError(f"'{m[1]}' repeated or out of Xen's order")
        if m[4] is not None:
            if m[1] != "Dom0 alloc.":
                raise StartOfDayError(f"'pages to be allocated' on the {m[1]} line")
            to_alloc = int(m[4])
        start, end = int(m[2], 16), int(m[3], 16)
        if end < start:
            raise StartOfDayError(f"{m[1]}: end {end:#x} below start {start:#x}")
        section[m[1]] = (start, end)
    raise StartOfDayError("the start-of-day block has no ENTRY ADDRESS line (console cut short?)")
