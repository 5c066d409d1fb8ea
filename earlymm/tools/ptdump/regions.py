"""Where Linux x86-64's regions start in one address space, found from its page tables (spec §2.3).

The fixed regions (LDT remap, cpu_entry_area, espfix, EFI, kernel image, modules, fixmap) sit at
constants of the kernel build. The three that CONFIG_RANDOMIZE_MEMORY moves at boot — the direct map,
vmalloc and vmemmap, in that order, each PUD (1 GiB) aligned — are found from the leaves:

* direct map: ``page_offset_base`` is the VA−PA offset that maps the most memory among the PUD-aligned
  offsets (it maps all RAM, from physical 0);
* vmalloc: the first leaf past the direct map that is not part of it, rounded down to 1 GiB (vmalloc
  hands out its lowest free address first); the area is VMALLOC_SIZE_TB long (32 TB, or 12800 TB with
  5-level paging);
* vmemmap: the first leaf past the vmalloc area, rounded down to 1 GiB (the struct pages of pfn 0).

Anything not found keeps the kernel's non-randomized default; ``Layout.how`` says which was which.
FIXADDR_START depends on the build's fixmap slots: the default is Linux 6.1's with a distribution
configuration (646 slots: vsyscall page … GHES NMI; Debian's 6.1 maps its local APIC at slot 514),
lowered to the lowest fixmap leaf present if one lies below it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from earlymm.tools.ptdump.engine import Leaf

PUD = 1 << 30
TB = 1 << 40
U64 = (1 << 64) - 1
CPU_ENTRY_AREA_BASE = 0xFFFF_FE00_0000_0000  # CPU_ENTRY_AREA_PGD (-4) << P4D_SHIFT
ESPFIX_BASE_ADDR = 0xFFFF_FF00_0000_0000  # ESPFIX_PGD_ENTRY (-2) << P4D_SHIFT
EFI_VA_END = (-68 << 30) & U64  # EFI runtime services are mapped downwards from -4 GiB to here
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
MODULES_END = 0xFFFF_FFFF_FF00_0000
FIXADDR_TOP = 0xFFFF_FFFF_FF7F_F000  # round_up(VSYSCALL_ADDR + PAGE_SIZE, PMD_SIZE) - PAGE_SIZE
FIX_SLOTS_6_1 = 646  # __end_of_permanent_fixed_addresses for 6.1 with IO-APIC, PARAVIRT_XXL, APEI GHES
ESPFIX_MAX_LINES = 16


@dataclass(frozen=True, slots=True)
class Defaults:
    guard_hole_end: int  # the kernel's dump walks [0, half) and [this, 2**64)
    ldt_base: int
    page_offset: int
    vmalloc: int
    vmalloc_size: int
    vmemmap: int


L4 = Defaults(0xFFFF_8800_0000_0000, 0xFFFF_8800_0000_0000, 0xFFFF_8880_0000_0000, 0xFFFF_C900_0000_0000,
              32 * TB, 0xFFFF_EA00_0000_0000)
L5 = Defaults(0xFF10_0000_0000_0000, 0xFF10_0000_0000_0000, 0xFF11_0000_0000_0000, 0xFFA0_0000_0000_0000,
              12800 * TB, 0xFFD4_0000_0000_0000)


@dataclass(frozen=True, slots=True)
class Marker:
    start: int
    name: str | None  # None: the end-of-space sentinel
    max_lines: int = 0  # the kernel prints at most this many lines in the region (espfix: 16)


@dataclass
class Layout:
    la57: bool
    page_offset: int
    vmalloc: int
    vmalloc_end: int
    vmemmap: int
    modules: int
    fixaddr_start: int
    how: dict[str, str] = field(default_factory=dict)

    @property
    def defaults(self) -> Defaults:
        return L5 if self.la57 else L4

    def markers(self) -> list[Marker]:
        """``address_markers[]`` of arch/x86/mm/dump_pagetables.c (x86-64, no KASAN, with LDT, espfix, EFI)."""
        d = self.defaults
        return [Marker(0, "User Space"), Marker(1 << 63, "Kernel Space"), Marker(d.ldt_base, "LDT remap"),
                Marker(self.page_offset, "Low Kernel Mapping"), Marker(self.vmalloc, "vmalloc() Area"),
                Marker(self.vmemmap, "Vmemmap"), Marker(CPU_ENTRY_AREA_BASE, "CPU entry Area"),
                Marker(ESPFIX_BASE_ADDR, "ESPfix Area", ESPFIX_MAX_LINES),
                Marker(EFI_VA_END, "EFI Runtime Services"), Marker(START_KERNEL_MAP, "High Kernel Mapping"),
                Marker(self.modules, "Modules"), Marker(MODULES_END, "End Modules"),
                Marker(self.fixaddr_start, "Fixmap Area"), Marker(U64, None)]

    def region_of(self, va: int) -> str:
        """The marker name of the region holding ``va``."""
        name = "User Space"
        for m in self.markers():
            if m.name is None or va < m.start:
                break
            name = m.name
        return name


def _sizes(leaves: list[Leaf], spans: list[int]) -> list[tuple[int, int, int]]:
    return [(va, spans[depth], va - (e & 0x000F_FFFF_FFFF_F000 & -spans[depth])) for va, e, depth, _a, _x in leaves]


def detect(leaves: list[Leaf], spans: list[int], la57: bool) -> Layout:
    """Find the layout from present leaves (any reading; ``spans[depth]`` = page size at that depth)."""
    d = L5 if la57 else L4
    how: dict[str, str] = {}
    kernel = [x for x in _sizes(leaves, spans) if d.guard_hole_end + (1 << (48 if la57 else 39)) <= x[0] <
              CPU_ENTRY_AREA_BASE]
    weight: Counter[int] = Counter()
    for _va, size, delta in kernel:
        if not delta % PUD:
            weight[delta] += size
    page_offset = d.page_offset
    if weight:
        page_offset = weight.most_common(1)[0][0] & U64
        how["page_offset"] = "detected"
    direct_end = max((va + size for va, size, delta in kernel if delta & U64 == page_offset), default=page_offset)
    rest = [va for va, _s, delta in kernel if va >= direct_end and delta & U64 != page_offset]
    vmalloc = rest[0] & -PUD & U64 if rest else d.vmalloc
    how["vmalloc"] = "detected" if rest else "default"
    vmalloc_end = vmalloc + d.vmalloc_size
    beyond = [va for va in rest if va >= vmalloc_end]
    vmemmap = beyond[0] & -PUD & U64 if beyond else d.vmemmap
    how["vmemmap"] = "detected" if beyond else "default"
    how.setdefault("page_offset", "default")
    return Layout(la57, page_offset, vmalloc, vmalloc_end, vmemmap, _modules(leaves, spans, how),
                  _fixaddr_start(leaves, how), how)


def _modules(leaves: list[Leaf], spans: list[int], how: dict[str, str]) -> int:
    # MODULES_VADDR = __START_KERNEL_map + KERNEL_IMAGE_SIZE: 1 GiB with CONFIG_RANDOMIZE_BASE (distribution
    # kernels), else 512 MiB, which shows as a mapping in [-1.5 GiB, -1 GiB) that is not the kernel image.
    image = [(va, delta) for va, _s, delta in _sizes(leaves, spans) if START_KERNEL_MAP <= va < MODULES_END]
    if not image:
        how["modules"] = "default"
        return START_KERNEL_MAP + PUD
    text_delta = image[0][1]
    small = any(START_KERNEL_MAP + (PUD >> 1) <= va < START_KERNEL_MAP + PUD and delta != text_delta
                for va, delta in image)
    how["modules"] = "detected (512 MiB kernel image)" if small else "detected (1 GiB kernel image)"
    return START_KERNEL_MAP + (PUD >> 1 if small else PUD)


def _fixaddr_start(leaves: list[Leaf], how: dict[str, str]) -> int:
    start = FIXADDR_TOP - (FIX_SLOTS_6_1 << 12)
    low = min((va for va, *_r in leaves if MODULES_END <= va <= FIXADDR_TOP), default=start)
    how["fixaddr_start"] = "lowest fixmap leaf" if low < start else "Linux 6.1 default"
    return min(start, low)
