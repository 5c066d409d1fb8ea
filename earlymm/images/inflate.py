"""Opening an image file for random access: ``mmap`` it, or inflate a ``.gz`` into a sparse temporary file.

The walker reads table entries anywhere in the image, so a compressed image must become randomly
addressable; holding the inflated bytes in memory would make memory grow with the image (and let a
small gzip bomb exhaust it). Instead the stream is inflated a bounded chunk at a time into an
anonymous temporary file (``tempfile.TemporaryFile``: unlinked at once, in ``$TMPDIR``), and that file
is mapped read-only like an uncompressed image. Chunks that are all zero are skipped with a seek, so the
file is sparse: a memory dump's untouched RAM costs neither memory nor disk. Inflating stops with an
error once the output passes ``limit`` bytes (``DEFAULT_MAX_INFLATED`` unless the caller says), which
bounds the time a gzip bomb can cost; an uncompressed image has no such limit because nothing is inflated.

Only regular files are opened: a FIFO or a device would block, or stream forever.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_INFLATED = 64 << 30
IN_CHUNK = 1 << 18  # compressed bytes read per step
OUT_CHUNK = 1 << 20  # inflated bytes produced per step: the bound on memory held at once


class OpenError(Exception):
    """The file cannot be opened or inflated; one line, without the path (the caller adds it)."""


@dataclass
class Opened:
    """The bytes of an image file: ``view`` over an mmap (or empty). ``problem`` is set when a gzip
    stream was cut short or corrupt and ``tolerant`` was asked for: ``view`` then holds what inflated
    before the damage."""

    view: memoryview
    mapping: mmap.mmap | None
    compressed: bool
    problem: str | None = None

    def close(self) -> None:
        self.view.release()
        if self.mapping is not None:
            # If a caller still holds a frame view, the map goes away with the last view instead.
            with contextlib.suppress(BufferError):
                self.mapping.close()
            self.mapping = None


def size_text(n: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and not n % (1 << shift):
            return f"{n >> shift}{unit}"
    return f"{n} bytes"


def _map(fd: int, size: int) -> tuple[memoryview, mmap.mmap | None]:
    if size == 0:
        return memoryview(b""), None
    m = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    return memoryview(m), m


def open_bytes(path: str | os.PathLike[str], *, limit: int = DEFAULT_MAX_INFLATED, tolerant: bool = False) -> Opened:
    """Map ``path`` read-only (inflating gzip first). Raises ``OpenError`` with a one-line reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise OpenError(f"cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
            raise OpenError(f"cannot read: it is {kind}; images are read with random access from a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            if f.read(2) != GZIP_MAGIC:
                view, m = _map(fd, st.st_size)
                return Opened(view, m, False)
            f.seek(0)
            return _inflate(f, limit, tolerant)
    except OSError as e:
        raise OpenError(f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _inflate(f: BinaryIO, limit: int, tolerant: bool) -> Opened:
    import tempfile  # only a compressed image needs it (start-up time of the common case)

    try:
        # the mapping outlives the file object
        with tempfile.TemporaryFile(prefix="earlymm-inflate-") as out:
            size, problem = _stream(f, out, limit)
            if problem is not None and not tolerant:
                raise OpenError(problem)
            out.truncate(size)  # a trailing run of zeros was skipped, not written
            out.flush()
            view, m = _map(out.fileno(), size)
            return Opened(view, m, True, problem)
    except OSError as e:
        where = tempfile.gettempdir()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OpenError(f"no space in {where} to inflate it (gunzip it where there is room and give that "
                            "file: uncompressed images are read in place)") from None
        raise OpenError(f"cannot inflate it into a temporary file in {where}: {e.strerror or e}") from None


def _stream(f: BinaryIO, out: BinaryIO, limit: int) -> tuple[int, str | None]:
    """Inflate every gzip member of ``f`` into ``out``; (bytes produced, problem or None)."""
    import zlib  # like tempfile: only a compressed image needs it

    size = 0
    d = zlib.decompressobj(wbits=31)
    pending = b""
    while True:
        if not pending:
            pending = f.read(IN_CHUNK)
            if not pending:
                break
        try:
            chunk = d.decompress(pending, OUT_CHUNK)
        except zlib.error as e:
            return size, f"corrupt gzip stream after {size} inflated bytes: {e}"
        pending = d.unconsumed_tail
        if chunk:
            size += len(chunk)
            if size > limit:
                raise OpenError(f"it inflates to more than {size_text(limit)} (a gzip bomb?); if it is a real "
                                "image, gunzip it first (uncompressed images are read in place) or raise "
                                "--max-inflate")
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
        if d.eof:
            rest = d.unused_data.lstrip(b"\0")  # gzip allows zero padding between and after members
            while not rest:
                more = f.read(IN_CHUNK)
                if not more:
                    return size, None
                rest = more.lstrip(b"\0")
            if not rest.startswith(GZIP_MAGIC[:len(rest)]):
                return size, f"trailing garbage after the gzip stream at {size} inflated bytes"
            d = zlib.decompressobj(wbits=31)
            pending = rest
    return size, f"truncated gzip stream: it ends after {size} inflated bytes"
