"""A PV guest's p2m list (pfn → mfn) stored compactly, and read back as numpy arrays.

The list is an array of unsigned longs indexed by pfn (arch/x86/xen/p2m.c): an mfn, ``INVALID_P2M_ENTRY``
(~0) for a pfn without a frame, or an mfn with ``IDENTITY_FRAME_BIT`` (bit 62: a 1:1 pfn = mfn frame,
e820 holes and I/O) or ``FOREIGN_FRAME_BIT`` (bit 63) set (arch/x86/include/asm/xen/page.h). Xen's
builder fills it with runs of consecutive mfns (ascending from its first allocation, descending from the
heap's top for the rest), so it is kept as runs ``[pfn, count, first value, step]`` — step 1 or -1 for
consecutive values, 0 for a repeated one (~0 for a missing range) — which is exact and a few hundred
bytes where the array is megabytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

INVALID_P2M_ENTRY = (1 << 64) - 1
FOREIGN_FRAME_BIT = 1 << 63
IDENTITY_FRAME_BIT = 1 << 62
MFN_MASK = ~(FOREIGN_FRAME_BIT | IDENTITY_FRAME_BIT) & INVALID_P2M_ENTRY

Run = tuple[int, int, int, int]  # (first pfn, count, first value, step -1, 0 or 1)
STEPS = {0: 0, 1: 1, INVALID_P2M_ENTRY: -1}  # a difference modulo 2^64 → step


class P2mError(ValueError):
    pass


def encode_runs(values: npt.NDArray[np.uint64]) -> list[Run]:
    """Maximal runs, greedily from pfn 0: step 0 (equal values), 1 or -1 (consecutive values) as the first
    difference says; a value that starts none of them is a run of one (step 1)."""
    v = np.asarray(values, dtype=np.uint64)
    n = len(v)
    if n <= 1:
        return [(0, 1, int(v[0]), 1)] if n else []
    d = np.diff(v)  # modulo 2^64
    starts = np.concatenate(([0], np.flatnonzero(d[1:] != d[:-1]) + 1))  # segments of equal differences
    ends = np.append(starts[1:], len(d))
    runs: list[Run] = []
    i = k = 0
    while i < n:
        if i == n - 1:
            runs.append((i, 1, int(v[i]), 1))
            break
        while ends[k] <= i:
            k += 1
        step = STEPS.get(int(d[starts[k]]))
        if step is not None:
            end = int(ends[k])  # d[i:end] all equal: elements i..end belong together
            if step:  # ~0 next to 0 is a wrap around 2^64, not a run
                wrap = np.flatnonzero(v[i:end] == np.uint64(INVALID_P2M_ENTRY if step == 1 else 0))
                end = i + int(wrap[0]) if len(wrap) else end
            runs.append((i, end - i + 1, int(v[i]), step))
            i = end + 1
        else:
            runs.append((i, 1, int(v[i]), 1))
            i += 1
    return runs


def decode_runs(runs: list[Run], size: int) -> npt.NDArray[np.uint64]:
    """The array back from its runs; runs must tile ``[0, size)`` in order."""
    out = np.empty(size, dtype=np.uint64)
    at = 0
    for pfn, count, first, step in runs:
        if pfn != at or count <= 0 or step not in (-1, 0, 1) or pfn + count > size:
            raise P2mError(f"p2m run {[pfn, count, first, step]} does not continue at pfn {at} (size {size})")
        if step == 0:
            out[pfn:pfn + count] = np.uint64(first)
        else:
            last = first + step * (count - 1)
            if not 0 <= first <= INVALID_P2M_ENTRY or not 0 <= last <= INVALID_P2M_ENTRY:
                raise P2mError(f"p2m run at pfn {pfn} leaves the 64-bit range")
            offsets = np.arange(count, dtype=np.uint64)
            out[pfn:pfn + count] = np.uint64(first) + offsets if step == 1 else np.uint64(first) - offsets
        at += count
    if at != size:
        raise P2mError(f"p2m runs cover {at} pfns, not {size}")
    return out


def runs_to_json(runs: list[Run]) -> list[list[str | int]]:
    return [[f"{p:#x}", f"{c:#x}", f"{v:#x}", s] for p, c, v, s in runs]


def dump_p2m_doc(doc: dict[str, object]) -> str:
    """JSON with one run per line (diff-friendly, still small)."""
    head = {k: v for k, v in doc.items() if k != "runs"}
    runs = doc.get("runs", [])
    assert isinstance(runs, list)
    body = ",\n".join(json.dumps(r) for r in runs)
    return json.dumps(head, indent=1)[:-2] + ',\n "runs": [\n' + body + "\n ]\n}\n"


def runs_from_json(data: object) -> list[Run]:
    if not isinstance(data, list):
        raise P2mError("p2m runs: not a list")
    try:
        return [(int(p, 16), int(c, 16), int(v, 16), int(s)) for p, c, v, s in data]
    except (TypeError, ValueError) as e:
        raise P2mError(f"p2m runs: {e}") from None


@dataclass(frozen=True)
class P2m:
    """The list at one instant. ``values[pfn]`` as stored; ``mfn_of``/``pfn_of`` for translation."""

    values: npt.NDArray[np.uint64]
    va: int  # where the guest keeps it (start_info.mfn_list or xen_p2m_addr)

    def __len__(self) -> int:
        return len(self.values)

    def kind(self, pfn: int) -> str:
        """``ram``, ``identity``, ``foreign``, ``missing`` (as p2m.c's xen_p2m_elem_type distinguishes)."""
        v = int(self.values[pfn]) if 0 <= pfn < len(self.values) else INVALID_P2M_ENTRY
        if v == INVALID_P2M_ENTRY:
            return "missing"
        if v & IDENTITY_FRAME_BIT:
            return "identity"
        return "foreign" if v & FOREIGN_FRAME_BIT else "ram"

    def ram_mask(self) -> npt.NDArray[np.bool_]:
        v = self.values
        flags = v & np.uint64(IDENTITY_FRAME_BIT | FOREIGN_FRAME_BIT)
        return np.asarray((v != np.uint64(INVALID_P2M_ENTRY)) & (flags == 0), dtype=np.bool_)

    def m2p(self) -> dict[int, int]:
        """mfn → pfn for the guest's own frames (``ram`` entries). Raises if two pfns share an mfn."""
        pfns = np.flatnonzero(self.ram_mask())
        mfns = self.values[pfns]
        if len(np.unique(mfns)) != len(mfns):
            raise P2mError("the p2m maps two pfns to one mfn")
        return dict(zip(mfns.tolist(), pfns.tolist(), strict=True))
