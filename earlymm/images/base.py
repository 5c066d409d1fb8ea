"""What every memory image shares: loading the file, and serving 4 KiB frames from file segments.

An image is a list of segments ``(phys_start, length, file_offset)``. A raw image is one segment at
physical 0; a QEMU core has one per ``PT_LOAD``. Frames are looked up by bisecting the segment starts
on first touch and cached per pfn, because the walker reads one table entry at a time and would
otherwise bisect on every read.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING

from earlymm.arch.addr import PAGE_SHIFT, PAGE_SIZE, merge_ranges
from earlymm.hw.memory import Buffer
from earlymm.images.cpustate import CpuState
from earlymm.images.inflate import DEFAULT_MAX_INFLATED, OpenError, open_bytes

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType


class ImageError(Exception):
    """A memory image could not be read; the message is one line naming the file and the problem."""


@dataclass(frozen=True, slots=True)
class FileSegment:
    """A run of guest-physical memory stored contiguously in the file."""

    start: int  # guest-physical address
    size: int  # bytes backed by the file
    offset: int  # file offset of the first byte

    @property
    def end(self) -> int:
        return self.start + self.size


class Blob:
    """A file's bytes: mmap'd read-only, or for ``.gz`` inflated into a sparse temporary file and mmap'd
    (``earlymm.images.inflate``): memory stays bounded whatever the image's size."""

    def __init__(self, path: str | Path, *, max_inflated: int = DEFAULT_MAX_INFLATED) -> None:
        self.path = str(path)
        try:
            self._opened = open_bytes(path, limit=max_inflated)
        except OpenError as e:
            raise ImageError(f"{path}: {e}") from None
        self.view = self._opened.view

    def __len__(self) -> int:
        return len(self.view)

    def close(self) -> None:
        self._opened.close()


class SegmentImage:
    """A ``FrameSource`` over file segments, with the CPU states the file recorded (if any)."""

    kind = "image"
    absent_zero = False  # a core's EARLYMM note can say that memory it lacks reads as zeros

    def __init__(self, blob: Blob, segments: list[FileSegment], cpus: list[CpuState]) -> None:
        self.path = blob.path
        self._blob = blob
        self._segs = sorted((s for s in segments if s.size > 0), key=lambda s: s.start)
        for a, b in zip(self._segs, self._segs[1:], strict=False):
            if b.start < a.end:
                blob.close()
                raise ImageError(f"{blob.path}: segments overlap at physical {b.start:#x}")
        self._starts = [s.start for s in self._segs]
        self._cache: dict[int, Buffer | None] = {}
        self._views: list[memoryview] = []
        self.cpus = cpus

    @property
    def segments(self) -> list[FileSegment]:
        return list(self._segs)

    def frame(self, pfn: int) -> Buffer | None:
        try:
            return self._cache[pfn]
        except KeyError:
            pass
        f = self._build(pfn)
        self._cache[pfn] = f
        return f

    def _build(self, pfn: int) -> Buffer | None:
        if pfn < 0:
            return None
        pa = pfn << PAGE_SHIFT
        end = pa + PAGE_SIZE
        i = max(bisect_right(self._starts, pa) - 1, 0)
        segs = self._segs
        if i < len(segs) and segs[i].start <= pa and end <= segs[i].end:
            off = segs[i].offset + pa - segs[i].start
            v = self._blob.view[off:off + PAGE_SIZE]
            self._views.append(v)
            return v
        # Slow path: the frame straddles a segment edge or a hole; assemble it, zero-padded.
        buf: bytearray | None = None
        while i < len(segs) and segs[i].start < end:
            s = segs[i]
            lo, hi = max(pa, s.start), min(end, s.end)
            if lo < hi:
                if buf is None:
                    buf = bytearray(PAGE_SIZE)
                src = s.offset + lo - s.start
                buf[lo - pa:hi - pa] = self._blob.view[src:src + hi - lo]
            i += 1
        return bytes(buf) if buf is not None else None

    def ranges(self) -> list[tuple[int, int]]:
        return merge_ranges((s.start, s.end) for s in self._segs)

    def close(self) -> None:
        self._cache.clear()
        for v in self._views:
            v.release()
        self._views.clear()
        self._blob.close()

    def __enter__(self) -> SegmentImage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} {len(self._segs)} segments {len(self.cpus)} cpus>"
