"""Reading what is left of a truncated QEMU core, so ptdump can dump the tables that survived.

``earlymm.images.open_image`` refuses a core whose segments run past the end of the file (or whose gzip
stream stops early), which is right for a reader that promises the whole image. A dump tool should do
better: serve every byte the file still has, and report the physical ranges that are gone. The ELF
header and program headers must still be there; CPU notes are kept if they are whole.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from earlymm.arch.addr import PAGE_SHIFT, PAGE_SIZE
from earlymm.hw.memory import Buffer
from earlymm.images import CpuState, ImageError
from earlymm.images.cpustate import parse_qemu_cpustate
from earlymm.images.inflate import DEFAULT_MAX_INFLATED, Opened, OpenError, open_bytes
from earlymm.images.qemu_core import (
    EARLYMM_NOTE_NAME,
    ELF_MAGIC,
    NT_EARLYMM_MEMORY,
    PT_LOAD,
    PT_NOTE,
    absent_zero_note,
    elf_class,
    iter_notes,
)

if TYPE_CHECKING:
    from pathlib import Path


class PartialCore:
    """A ``FrameSource`` over the surviving part of a core; ``missing`` lists the lost ``[start, end)``."""

    kind = "partial-core"

    def __init__(self, path: str, data: Opened, segments: list[tuple[int, int, int]], cpus: list[CpuState],
                 missing: list[tuple[int, int]], absent_zero: bool = False) -> None:
        self.path = path
        self._opened = data
        self._data = data.view
        self.absent_zero = absent_zero  # the core's EARLYMM note: memory it never held reads as zeros
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

    def is_lost(self, pfn: int) -> bool:
        """True if frame ``pfn`` was in the core but is cut off (never to be read as zeros)."""
        pa = pfn << PAGE_SHIFT
        return any(lo < pa + PAGE_SIZE and pa < hi for lo, hi in self.missing)

    def close(self) -> None:
        self._opened.close()


def open_partial(path: str | Path, *, max_inflated: int = DEFAULT_MAX_INFLATED) -> PartialCore:
    """Open a possibly truncated core. Raises ``ImageError`` if not even the headers survive."""
    from pathlib import Path  # a truncated core is the rare case: the common start-up does without pathlib

    p = Path(path)
    try:
        opened = open_bytes(p, limit=max_inflated, tolerant=True)
    except OpenError as e:
        raise ImageError(f"{p}: {e}") from None
    try:
        return _parse(p, opened)
    except BaseException:
        opened.close()
        raise


def _parse(p: Path, opened: Opened) -> PartialCore:
    data = opened.view
    cls = elf_class(data)
    if bytes(data[:4]) != ELF_MAGIC or cls is None or len(data) < cls.ehdr.size:
        raise ImageError(f"{p}: truncated before the end of its ELF header")
    f = cls.ehdr.unpack_from(data, 0)
    phoff, phentsize, phnum = f[5], f[9], f[10]
    size = cls.phdr_struct.size
    if phentsize != size or phoff + phnum * size > len(data):
        raise ImageError(f"{p}: truncated inside its program headers")
    segments: list[tuple[int, int, int]] = []
    missing: list[tuple[int, int]] = []
    cpus: list[CpuState] = []
    absent_zero = False
    for i in range(phnum):
        p_type, _fl, off, _va, paddr, filesz, _memsz, _al = cls.phdr(data, phoff + i * size)
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
                    elif name == EARLYMM_NOTE_NAME and ntype == NT_EARLYMM_MEMORY:
                        absent_zero = absent_zero_note(desc)
            except (ImageError, ValueError):
                pass  # a cut note: keep the CPUs read before it
    if not segments:
        raise ImageError(f"{p}: no PT_LOAD segments: the core holds no memory")
    return PartialCore(str(p), opened, segments, cpus, missing, absent_zero)
