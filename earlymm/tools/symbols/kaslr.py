"""Where the kernel image sits in this address space: the KASLR slide of a symbol file, from the tables.

The x86-64 kernel image is mapped linearly at ``__START_KERNEL_map`` (VA ``__START_KERNEL_map + x`` →
PA ``phys_base + x``, spec §2.3). With KASLR its virtual and physical places are chosen independently at
boot, and the running kernel's symbols are the link addresses plus the virtual slide. Since 4.x
``__startup_64`` (arch/x86/kernel/head64.c @ v6.1) clears every ``level2_kernel_pgt`` entry below
``_text``, and ``cleanup_highmap`` keeps it so, the lowest present leaf of the high mapping *is* ``_text``:

* slide = (lowest high-map leaf) − (the file's ``_text``), a multiple of ``CONFIG_PHYSICAL_ALIGN``;
* ``_text``'s physical address is that leaf's, which places the whole image physically too (so table
  pages inside the image, like ``init_top_pgt``, are labelled by their physical address).

A kernel that leaves the high mapping from ``__START_KERNEL_map`` in place (before ``__startup_64``, or
v3.9 as earlymm's model boots it) shows no slide: 0 is assumed and said. A kallsyms from the same boot
yields slide 0, as it should. When the image holds the page of ``phys_base``, its value is checked against
the placement. The probes are QEMU's debug walk (``tools.gva2gpa``), at most 512 of them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from earlymm.arch.modes import PagingMode
from earlymm.hw.memory import PhysMem
from earlymm.tools import gva2gpa as g2g
from earlymm.tools.ptdump.semantics import tool_semantics
from earlymm.tools.symbols.table import KERNEL_HALF, Symbol, SymbolError, SymbolTable, label_text, parse_symbol_ref

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
KERNEL_IMAGE_SIZE = 1 << 30  # with CONFIG_RANDOMIZE_BASE
PMD_SIZE = 1 << 21  # CONFIG_PHYSICAL_ALIGN's minimum on x86-64, and the high map's page size
U64 = (1 << 64) - 1
TEXT_NAMES = ("_text", "_stext", "startup_64")


@dataclass(frozen=True, slots=True)
class Walker:
    """What the probes need: memory and the paging registers (a tool's Space or CPU supplies them)."""

    mem: PhysMem
    mode: PagingMode
    cr3: int
    cr4: int
    nxe: bool

    def va_to_pa(self, va: int) -> int | None:
        if self.mode is PagingMode.DISABLED:
            return va
        sem = tool_semantics("gva2gpa", self.mode, self.cr4, self.nxe)
        return g2g.gva2gpa(self.mem, sem, g2g.root_of(self.mode, self.cr3), va).pa

    def read_u64(self, va: int) -> int | None:
        pa = self.va_to_pa(va)
        if pa is None or pa & 0xFFF > 0xFF8:
            return None
        frame = self.mem.frame(pa >> 12)
        return None if frame is None else int(struct.unpack_from("<Q", frame, pa & 0xFFF)[0])


@dataclass(frozen=True, slots=True)
class Placement:
    slide: int  # added to the file's relocatable addresses
    text_pa: int | None  # physical address of _text (None: unknown)
    how: str
    notes: tuple[str, ...] = ()


def high_map_start(w: Walker) -> tuple[int, int] | None:
    """(VA, PA) of the lowest present 2 MiB slot of the kernel's high mapping."""
    if not w.mode.is_ia32e:
        return None
    for va in range(START_KERNEL_MAP, START_KERNEL_MAP + KERNEL_IMAGE_SIZE, PMD_SIZE):
        pa = w.va_to_pa(va)
        if pa is not None:
            return va, pa
    return None


def text_symbol(table: SymbolTable) -> Symbol | None:
    for name in TEXT_NAMES:
        s = table.get(name)
        if s is not None and not s.absolute:
            return s
    return None


def place(table: SymbolTable, w: Walker | None, given: int | None = None) -> Placement:
    """The slide (``given``, else derived from the high mapping) and ``_text``'s physical address."""
    text = text_symbol(table)
    start = high_map_start(w) if w is not None else None
    notes: list[str] = []
    if given is not None:
        slide, how = given, f"KASLR offset {given:#x} as given"
    elif text is None:
        slide, how = 0, "no _text in the symbol file: addresses used as they are (give --kaslr-offset)"
    elif start is None:
        slide, how = 0, ("no kernel image mapping at __START_KERNEL_map in these tables: addresses used as they "
                         "are (give --kaslr-offset)")
    elif start[0] == START_KERNEL_MAP and text.address != START_KERNEL_MAP:
        slide, how = 0, ("the high mapping starts at __START_KERNEL_map, so no KASLR slide shows: 0 assumed "
                         "(give --kaslr-offset)")
    else:
        slide = (start[0] - text.address) & U64
        how = f"KASLR offset {slide:#x}: _text is the lowest kernel-image mapping, {start[0]:#x} → PA {start[1]:#x}"
        if slide % PMD_SIZE or not (slide < KERNEL_IMAGE_SIZE or slide > U64 - KERNEL_IMAGE_SIZE):
            notes.append(f"derived KASLR offset {slide:#x} is not a 2 MiB multiple below 1 GiB: the symbol file "
                         "may belong to another kernel")
    text_pa = None
    if text is not None and w is not None:
        text_va = (text.address + slide) & U64
        text_pa = w.va_to_pa(text_va)
        if text_pa is None and start is not None and start[0] == START_KERNEL_MAP:
            text_pa = start[1] + (text_va - START_KERNEL_MAP)
        notes += _check_phys_base(table, w, slide, text_va, text_pa)
    return Placement(slide, text_pa, how, tuple(notes))


def _check_phys_base(table: SymbolTable, w: Walker, slide: int, text_va: int, text_pa: int | None) -> list[str]:
    pb = table.get("phys_base")
    if pb is None or pb.absolute or text_pa is None:
        return []
    value = w.read_u64((pb.address + slide) & U64)
    want = (text_pa - (text_va - START_KERNEL_MAP)) & U64
    if value is None or value == want:
        return []
    return [f"phys_base in memory is {value:#x}, but _text at {text_va:#x} → {text_pa:#x} means {want:#x}: "
            "the symbol file may belong to another kernel"]


class Symbolizer:
    """Labels (``name+0xoff``) for virtual and physical addresses, and symbol references as addresses."""

    def __init__(self, table: SymbolTable, placement: Placement) -> None:
        self.table = table
        self.placement = placement
        text = text_symbol(table)
        end = table.get("_end")
        self._image: tuple[int, int] | None = None
        if text is not None and placement.text_pa is not None:
            size = end.address - text.address if end is not None and end.address > text.address else 0
            self._image = (placement.text_pa, size)
        self._text_va = (text.address + placement.slide) & U64 if text is not None else None

    def _slide_of(self, s: Symbol) -> int:
        return 0 if s.absolute or s.module else self.placement.slide

    def address(self, s: Symbol) -> int:
        """The runtime address of ``s`` in this image."""
        return (s.address + self._slide_of(s)) & U64

    def va_label(self, va: int) -> str | None:
        """``name+0xoff`` for a virtual address, or None."""
        if self.placement.slide and va >= KERNEL_HALF:
            hit = self.table.nearest((va - self.placement.slide) & U64)
            if hit is not None and hit[0].module:  # module symbols are not slid: look them up as they are
                hit = None
            if hit is None:
                hit = self.table.nearest(va)
                hit = hit if hit is not None and hit[0].module else None
        else:
            hit = self.table.nearest(va)
        return label_text(*hit) if hit is not None else None

    def pa_label(self, pa: int) -> str | None:
        """The label of the kernel-image byte at physical ``pa`` (via ``_text``'s physical address)."""
        if self._image is None or self._text_va is None:
            return None
        base, size = self._image
        if not base <= pa < base + size:
            return None
        return self.va_label((self._text_va + pa - base) & U64)

    def resolve(self, token: str) -> int | None:
        """The runtime VA of ``name`` or ``name+OFFSET``; None if ``token`` is not shaped like one.
        Raises ``SymbolError`` for a name the file does not define."""
        ref = parse_symbol_ref(token)
        if ref is None:
            return None
        name, off = ref
        s = self.table.lookup(name)
        if s.absolute:
            raise SymbolError(f"symbol {name!r} is absolute ({s.address:#x}, e.g. a per-CPU offset), not an address")
        return (self.address(s) + off) & U64

    def describe(self) -> str:
        t = self.table
        return f"{len(t)} symbols from {t.source} ({t.format}); {self.placement.how}"


def symbolizer_for(table: SymbolTable, w: Walker | None, given: int | None = None) -> Symbolizer:
    return Symbolizer(table, place(table, w, given))

