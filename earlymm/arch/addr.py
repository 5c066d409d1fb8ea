"""Address kinds and the arithmetic on them (cf. the Rust ``x86_64`` crate's ``VirtAddr``/``PhysAddr``).

All addresses are plain ``int`` at run time; the ``NewType``s let mypy catch a physical address passed
where a virtual one is expected, and a pfn where an mfn is (the Xen PV bug class).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NewType

VirtAddr = NewType("VirtAddr", int)
PhysAddr = NewType("PhysAddr", int)
Pfn = NewType("Pfn", int)
Mfn = NewType("Mfn", int)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
U64 = (1 << 64) - 1


def sign_extend(value: int, bits: int) -> int:
    """Sign-extend the low ``bits`` of ``value`` to a 64-bit unsigned integer."""
    value &= (1 << bits) - 1
    if value >> (bits - 1):
        value |= U64 ^ ((1 << bits) - 1)
    return value


def is_canonical(va: int, width: int) -> bool:
    """True if bits 63:width-1 of ``va`` all equal bit width-1 (SDM Vol. 3A §3.3.7.1)."""
    top = va >> (width - 1)
    return top == 0 or top == (1 << (65 - width)) - 1


def align_down(value: int, align: int) -> int:
    return value & ~(align - 1)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def pfn_of(pa: int) -> Pfn:
    return Pfn(pa >> PAGE_SHIFT)


def merge_ranges(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ``[start, end)`` ranges with overlapping and touching ones joined."""
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return merged


def parse_int(text: str) -> int:
    """Parse ``0x…`` hex, or decimal; underscores and a leading ``-`` are not accepted for addresses."""
    t = text.strip().replace("_", "").replace("'", "")
    try:
        if not t or t.startswith("-"):
            raise ValueError
        return int(t, 16) if t.lower().startswith("0x") else int(t, 10)
    except ValueError:
        raise ValueError(f"not an address: {text!r}") from None
