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


EXPECTED = "expected 0x followed by hex digits, or plain decimal digits"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class AmbiguousNumber(ValueError):
    """Digits that could be hex or decimal (zero-padded, no ``0x``): neither reading is safe to guess."""


def parse_int(text: str, *, bits: int = 64, what: str = "address") -> int:
    """A number as a user writes an address or register value: ``0x`` + hex digits, or decimal.

    Strict, because a misread address silently answers a different question: no sign, no digit
    separators (``_``, ``'``, ``,``), ASCII digits only, at most ``bits`` bits. Zero-padded digits
    without ``0x`` (``00007f0000000000``, as QEMU's ``info tlb`` prints) are refused as ambiguous
    (``AmbiguousNumber``) rather than read as decimal; hex letters without ``0x`` are refused too.
    Surrounding blanks are ignored. Every error is a ``ValueError`` saying what was expected.
    """
    t = text.strip(" \t\r\n")
    a = "an" if what[:1] in "aeiou" else "a"
    shown = repr(text) if len(text) <= 40 else repr(text[:37]) + "…"
    if not t:
        raise ValueError(f"empty {what}: {EXPECTED}")
    if not t.isascii():
        raise ValueError(f"not {a} {what}: {shown} has non-ASCII characters ({EXPECTED})")
    if t[0] in "+-":
        raise ValueError(f"not {a} {what}: {shown} has a sign ({EXPECTED})")
    if any(c in t for c in "_',"):
        raise ValueError(f"not {a} {what}: {shown} has digit separators ({EXPECTED})")
    if t[:2].lower() == "0x":
        digits = t[2:]
        if not digits or not all(c in _HEX_DIGITS for c in digits):
            raise ValueError(f"not {a} {what}: {shown} ({EXPECTED})")
        value = int(digits, 16)
    elif t.isdigit():
        if len(t) > 1 and t[0] == "0":
            raise AmbiguousNumber(f"ambiguous {what}: {shown} is zero-padded without 0x, so it could be hex (as "
                                  f"info tlb prints) or decimal; write 0x{t} for hex, or {t.lstrip('0') or '0'} "
                                  "for decimal")
        if len(t) > (bits * 3) // 10 + 1:  # more digits than 2**bits has: too big, without converting
            raise ValueError(f"{what} {shown} does not fit in {bits} bits")
        value = int(t, 10)
    elif all(c in _HEX_DIGITS for c in t):
        raise AmbiguousNumber(f"not {a} {what}: {shown} has hex digits but no 0x (write 0x{t} for hex)")
    else:
        raise ValueError(f"not {a} {what}: {shown} ({EXPECTED})")
    if value >> bits:
        raise ValueError(f"{what} {shown} does not fit in {bits} bits")
    return value
