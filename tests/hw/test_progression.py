"""``arch.progression``: a run of stepping 64-bit entries made by big-integer arithmetic is, byte for byte,
the entries packed one by one (``struct``), and refuses a run whose last entry would not fit in 64 bits."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from earlymm.arch.progression import progression_bytes

U64 = (1 << 64) - 1


@given(first=st.integers(0, U64), step=st.sampled_from([0, 1, 0x1000, 1 << 21, 1 << 30, 1 << 39, 12345]),
       n=st.integers(0, 600))
def test_progression_is_the_entries_packed_one_by_one(first: int, step: int, n: int) -> None:
    got = progression_bytes(first, step, n)
    if n and first + step * (n - 1) > U64:
        assert got is None
    else:
        assert got == b"".join(struct.pack("<Q", first + k * step) for k in range(n))


def test_a_table_of_1g_leaves_with_nx() -> None:
    run = progression_bytes((1 << 63) | 0x1E3, 1 << 30, 512)
    assert run is not None and len(run) == 4096
    assert struct.unpack_from("<Q", run, 8 * 511)[0] == (1 << 63) | (511 << 30) | 0x1E3
