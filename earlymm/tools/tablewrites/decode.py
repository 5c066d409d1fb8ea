"""One entry decoded as the CPU reads it at its level (SDM Vol. 3A §4.3–§4.5 tables 4-4…4-20): the flags,
the address, whether it is a leaf (and of which size) or points at a table."""

from __future__ import annotations

from dataclasses import dataclass

_FLAGS8 = ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"), (8, "G"), (63, "NX"))
_FLAGS4 = ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"), (8, "G"))
_SIZES = {(8, 1): "4K", (8, 2): "2M", (8, 3): "1G", (4, 1): "4K", (4, 2): "4M"}


@dataclass(frozen=True, slots=True)
class Decoded:
    present: bool
    flags: tuple[str, ...]
    addr: int  # the physical (machine, under Xen) address the entry holds, masked for its kind
    leaf: str | None  # page size of a leaf ("4K", "2M", "1G", "4M"); None for a table pointer or not present

    def to_json(self) -> dict[str, object]:
        return {"present": self.present, "flags": list(self.flags), "addr": f"{self.addr:#x}",
                "leaf": self.leaf}


def decode(value: int, level: int | None, entry_size: int, *, pdpt: bool = False) -> Decoded:
    """``level`` None (unknown) decodes the flags and the 4 KiB-frame address only. ``pdpt``: a PAE
    page-directory-pointer entry (only P, PWT, PCD are defined; never a leaf)."""
    present = bool(value & 1)
    names = _FLAGS8 if entry_size == 8 else _FLAGS4
    flags = [n for b, n in names if value >> b & 1 and not (pdpt and b not in (0, 3, 4))]
    ps = bool(value & 0x80) and level is not None and level > 1 and not pdpt
    if ps:
        flags.append("PS")
    elif level == 1 and value & 0x80:
        flags.append("PAT")
    frame_mask = 0x000F_FFFF_FFFF_F000 if entry_size == 8 else 0xFFFF_F000
    leaf: str | None = None
    addr = value & frame_mask
    if present and level is not None:
        if level == 1:
            leaf = "4K"
        elif ps:
            leaf = _SIZES.get((entry_size, level), "?")
            size = (1 << 21 if level == 2 else 1 << 30) if entry_size == 8 else 1 << 22
            addr = value & frame_mask & ~(size - 1)
            if entry_size == 4:  # PSE-36: bits 20:13 are address bits 39:32
                addr = (value & 0xFFC0_0000) | ((value >> 13 & 0xFF) << 32)
    return Decoded(present, tuple(flags), addr, leaf)


def points_to_table(value: int, level: int | None, *, pdpt: bool = False) -> bool:
    """A present entry above level 1 without PS (a PAE PDPTE always): the next level's table."""
    return bool(value & 1) and level is not None and level > 1 and (pdpt or not value & 0x80)
