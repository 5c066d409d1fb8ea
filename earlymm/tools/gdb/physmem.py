"""Guest-physical frames read live through QEMU's gdbstub, as a ``FrameSource``.

QEMU's physical-memory mode (``Qqemu.PhyMemMode:1``) makes the stub serve memory reads with
``cpu_physical_memory_read``, which never fails: an address with no RAM behind it reads as zeros, and an
MMIO address is a real device read (with whatever side effects the device has). So the stub cannot tell
us where the holes are; QEMU's own memory map can. ``monitor info mtree -f`` prints the flattened map of
each address space, and the one listing ``AS "memory"`` is the one those reads go through. Frames outside
its RAM/ROM ranges are reported as holes and never read.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from earlymm.arch.addr import PAGE_SHIFT, PAGE_SIZE, merge_ranges
from earlymm.hw.memory import MAX_PA, Buffer

# Reads ``length`` bytes of guest-physical memory at ``pa``; ``None`` when the stub refuses.
PhysReader = Callable[[int, int], Buffer | None]

# ``  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000`` (QEMU's
# mtree_print_flatview). The kind is memory_region_type(): ram, rom, romd (a flash device in ROM
# mode: plain reads), ramd (RAM belonging to a device, e.g. a passed-through BAR) or i/o.
_FLAT_RANGE = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ([a-z/]+)\): ")
_READABLE_KINDS = frozenset({"ram", "rom", "romd"})


class MemoryMapError(ValueError):
    """``info mtree -f`` output without a flat view of the system address space."""


def parse_flat_ram(text: str) -> list[tuple[int, int]]:
    """Sorted, merged ``[start, end)`` RAM/ROM ranges of QEMU's system address space.

    ``text`` is the output of the HMP command ``info mtree -f``: several ``FlatView #n`` blocks, each
    naming the address spaces (``AS "…"``) that share it. The system one is ``AS "memory"`` (also
    ``cpu-memory-0``, the CPU's view outside SMM).
    """
    blocks: list[list[str]] = []
    for line in text.replace("\r", "").split("\n"):
        if line.startswith("FlatView #"):
            blocks.append([])
        elif blocks:
            blocks[-1].append(line)
    chosen = next((b for b in blocks if any(ln.strip().startswith('AS "memory"') for ln in b)), None)
    if chosen is None:
        chosen = next((b for b in blocks if any(ln.strip().startswith('AS "cpu-memory-') for ln in b)), None)
    if chosen is None:
        raise MemoryMapError('no flat view of address space "memory" in the monitor\'s info mtree -f output')
    spans = []
    for line in chosen:
        m = _FLAT_RANGE.match(line)
        if m and m[3] in _READABLE_KINDS:
            spans.append((int(m[1], 16), int(m[2], 16) + 1))  # QEMU prints inclusive ends
    return merge_ranges(spans)


class GdbPhysFrames:
    """A ``FrameSource`` over live guest-physical memory, cached for the lifetime of one command.

    ``ram`` is the map from :func:`parse_flat_ram`; a frame not wholly inside it is a hole. ``None``
    means the map is unknown and every frame below 2**52 is read (unassigned memory then reads as
    QEMU returns it, i.e. zeros). The cache never goes stale within a command because the guest is
    stopped while gdb runs it; a new command makes a new source.
    """

    def __init__(self, read: PhysReader, ram: list[tuple[int, int]] | None) -> None:
        self._read = read
        self._ram = ram
        self._cache: dict[int, bytes | None] = {}
        self.reads = 0  # frames fetched from the stub, for tests and --stats-like diagnostics

    def _held(self, pfn: int) -> bool:
        if not 0 <= pfn < MAX_PA >> PAGE_SHIFT:
            return False
        if self._ram is None:
            return True
        start, end = pfn << PAGE_SHIFT, (pfn + 1) << PAGE_SHIFT
        return any(s <= start and end <= e for s, e in self._ram)

    def frame(self, pfn: int) -> bytes | None:
        if pfn in self._cache:
            return self._cache[pfn]
        data: bytes | None = None
        if self._held(pfn):
            got = self._read(pfn << PAGE_SHIFT, PAGE_SIZE)
            self.reads += 1
            # A short read is as good as none: the walker indexes the whole frame.
            data = bytes(got) if got is not None and len(got) == PAGE_SIZE else None
        self._cache[pfn] = data
        return data

    def ranges(self) -> list[tuple[int, int]]:
        return list(self._ram) if self._ram is not None else [(0, MAX_PA)]
