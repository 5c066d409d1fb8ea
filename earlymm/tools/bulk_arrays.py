"""The array plumbing of ``bulk.py``: the result table, the per-call scratch arrays, a sort-based unique."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]
BOOL = NDArray[np.bool_]

# The result table's columns; ``pa`` of a lane is base | (va & mask), both zero unless the walk succeeded.
COLUMNS: tuple[tuple[str, type[np.generic]], ...] = (
    ("outcome", np.uint8), ("error_code", np.uint32), ("user_page", np.bool_), ("writable", np.bool_),
    ("xd", np.bool_), ("pkey", np.uint8), ("page_size", np.uint64), ("base", np.uint64), ("mask", np.uint64))
OUTPUTS = tuple(name for name, _ in COLUMNS if name not in ("base", "mask"))


@dataclass
class Results:
    """The result table, grown by doubling; row ``rid`` holds what every lane with that id reports."""

    n: int = 0
    cols: dict[str, NDArray[Any]] = field(default_factory=lambda: {k: np.zeros(64, dt) for k, dt in COLUMNS})

    def add(self, count: int, **values: ArrayLike) -> I64:
        """Append ``count`` rows (missing columns zero); returns their ids."""
        start, end = self.n, self.n + count
        if end > self.cols["outcome"].size:
            cap = max(2 * self.cols["outcome"].size, end)
            for k, a in self.cols.items():
                grown = np.zeros(cap, a.dtype)
                grown[:start] = a[:start]
                self.cols[k] = grown
        for k, v in values.items():
            self.cols[k][start:end] = v
        self.n = end
        return np.arange(start, end, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Buffers:
    """One call's scratch arrays, reused chunk after chunk: fresh arrays for every step of every chunk
    would each be new memory to fault in, which costs a small batch more than the arithmetic."""

    pos: I64
    code: I64
    res: I64
    node: I64
    tmp: U64
    bad: BOOL

    @classmethod
    def of(cls, n: int) -> Buffers:
        return cls(np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
                   np.empty(n, np.uint64), np.empty(n, np.bool_))


def unique_inverse(keys: U64) -> tuple[U64, I64]:
    """``np.unique(keys, return_inverse=True)`` by one sort: numpy 2's hash-based unique costs several
    times more on the few hundred keys a fill has."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    first = np.empty(ordered.size, np.bool_)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inv = np.empty(keys.size, np.int64)
    inv[order] = np.cumsum(first) - 1
    return ordered[first], inv
