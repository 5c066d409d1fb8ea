"""Reading what is left of a truncated QEMU core, so ptdump can dump the tables that survived.

``earlymm.images.open_image`` refuses a core whose segments run past the end of the file (or whose gzip
stream stops early), which is right for a reader that promises the whole image. A dump tool should do
better: serve every byte the file still has, and report the physical ranges that are gone. The ELF
header and program headers must still be there; CPU notes are kept if they are whole.
"""

from __future__ import annotations

import mmap
import zlib
from bisect import bisect_right
from typing import TYPE_CHECKING

from earlymm.arch.addr import PAGE_SHIFT, PAGE_SIZE
from earlymm.hw.memory import Buffer
from earlymm.images import CpuState, ImageError
from earlymm.images.cpustate import parse_qemu_cpustate
from earlymm.images.qemu_core import EHDR, ELF_MAGIC, PHDR, PT_LOAD, PT_NOTE, iter_notes

if TYPE_CHECKING:
    from pathlib import Path


class PartialCore:
    """A ``FrameSource`` over the surviving part of a core; ``missing`` lists the lost ``[start, end)``."""

    kind = "partial-core"

    def __init__(self, path: str, data: Buffer, segments: list[tuple[int, int, int]], cpus: list[CpuState],
                 missing: list[tuple[int, int]]) -> None:
        self.path = path
        self._data = memoryview(data)
        self._segs = sorted(segments)  # (phys start, size, file offset)
        self._starts = [s[0] for s in self._segs]
        self.cpus = cpus
        self.missing = missing

    def frame(self, pfn: int) -> Buffer | None:
        pa = pfn << PAGE_SHIFT
        i = bisect_right(self._starts, pa) - 1
        if i < 0:
            return None
        start, size, off = self._segs[i]
        if pa + PAGE_SIZE > start + size:
            return None  # partly or wholly lost: a table there cannot be trusted
        return self._data[off + pa - start:off + pa - start + PAGE_SIZE]

    def ranges(self) -> list[tuple[int, int]]:
        return [(s, s + n) for s, n, _o in self._segs if n]

    def close(self) -> None:
        self._data.release()


def _read(path: Path) -> Buffer:
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            f.seek(0, 2)
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)) if f.tell() else b""
        f.seek(0)
        raw = f.read()
    d = zlib.decompressobj(wbits=31)
    try:
        return d.decompress(raw) + d.flush()
    except zlib.error:
        return d.flush()  # what came out before the stream broke


def open_partial(path: str | Path) -> PartialCore:
    """Open a possibly truncated core. Raises ``ImageError`` if not even the headers survive."""
    from pathlib import Path  # a truncated core is the rare case: the common start-up does without pathlib

    p = Path(path)
    try:
        data = _read(p)
    except OSError as e:
        raise ImageError(f"{p}: cannot read: {e.strerror or e}") from e
    if bytes(data[:4]) != ELF_MAGIC or len(data) < EHDR.size:
        raise ImageError(f"{p}: truncated before the end of its ELF header")
    f = EHDR.unpack_from(data, 0)
    phoff, phentsize, phnum = f[5], f[9], f[10]
    if phentsize != PHDR.size or phoff + phnum * PHDR.size > len(data):
        raise ImageError(f"{p}: truncated inside its program headers")
    segments: list[tuple[int, int, int]] = []
    missing: list[tuple[int, int]] = []
    cpus: list[CpuState] = []
    for i in range(phnum):
        p_type, _fl, off, _va, paddr, filesz, _memsz, _al = PHDR.unpack_from(data, phoff + i * PHDR.size)
        have = max(0, min(filesz, len(data) - off))
        if p_type == PT_LOAD:
            segments.append((paddr, have, off))
            if have < filesz:
                missing.append((paddr + have, paddr + filesz))
        elif p_type == PT_NOTE:
            try:
                for name, ntype, desc in iter_notes(memoryview(data)[off:off + have], str(p)):
                    if name == b"QEMU" and ntype == 0:
                        cpus.append(parse_qemu_cpustate(desc))
            except (ImageError, ValueError):
                pass  # a cut note: keep the CPUs read before it
    if not segments:
        raise ImageError(f"{p}: no PT_LOAD segments: the core holds no memory")
    return PartialCore(str(p), data, segments, cpus, missing)
