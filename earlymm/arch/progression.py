"""Runs of 64-bit page-table entries that step through memory — ``first``, ``first + step``, … — as the
bytes a table holds them in (little-endian), made with big-integer arithmetic rather than a Python step per
entry. The boot model's builders write thousands of such runs (a table of consecutive leaves each) and the
invariants compare thousands of tables against them: the 4 PiB 5-level boot has 8,191 tables of 1 GiB
leaves.

The run is the integer Σ (first + k·step)·2^(64k) = first·Σ 2^(64k) + step·Σ k·2^(64k), whose bytes are
the entries as long as no entry needs more than 64 bits (nothing then carries into the next)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=16)
def _ones(n: int) -> int:
    """Σ 2^(64k) for k < n: what places ``first`` in each entry."""
    return int.from_bytes((b"\x01" + bytes(7)) * n, "little")


@functools.lru_cache(maxsize=16)
def _ramp(step: int, n: int) -> int:
    """Σ k·step·2^(64k) for k < n (a boot uses one or two steps: the page sizes)."""
    return step * int.from_bytes(b"".join(k.to_bytes(8, "little") for k in range(n)), "little")


def progression_bytes(first: int, step: int, n: int) -> bytes | None:
    """``n`` little-endian u64 entries ``first + k·step``; None when one would not fit in 64 bits."""
    if n <= 0:
        return b""
    if first < 0 or step < 0 or first + step * (n - 1) >= 1 << 64:
        return None
    return (first * _ones(n) + _ramp(step, n)).to_bytes(8 * n, "little")
