"""Open a symbol file of any supported kind: ``/proc/kallsyms`` text, ``System.map``, or a vmlinux ELF.

The kind is told by content (an ELF magic number means vmlinux); text may be gzip-compressed (``.gz``).
Only regular files are read (``/proc/kallsyms`` is one): a FIFO or device would block or never end.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from collections.abc import Iterator

from earlymm.tools.symbols.elf import read_elf
from earlymm.tools.symbols.table import MAX_LINE, SymbolError, SymbolTable, read_text

ELF_MAGIC = b"\x7fELF"
GZIP_MAGIC = b"\x1f\x8b"


def _lines(f: io.TextIOBase) -> Iterator[str]:
    while line := f.readline(MAX_LINE + 1):
        yield line


def load_symbols(path: str) -> SymbolTable:
    """The symbols in ``path``. Raises ``SymbolError`` with one line saying what is wrong."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SymbolError(f"cannot read symbol file {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SymbolError(f"symbol file {path} is not a regular file")
    try:
        with open(path, "rb") as raw:
            head = raw.read(4)
        if head == ELF_MAGIC:
            return read_elf(path)
        opener = gzip.open if head[:2] == GZIP_MAGIC else open
        with opener(path, "rb") as binary:
            text = io.TextIOWrapper(binary, encoding="utf-8", newline=None)
            return read_text(path, _lines(text))
    except OSError as e:  # includes gzip.BadGzipFile, EOFError is separate
        raise SymbolError(f"cannot read symbol file {path}: {getattr(e, 'strerror', None) or e}") from None
    except EOFError:
        raise SymbolError(f"{path}: truncated gzip stream") from None
    except UnicodeDecodeError:
        raise SymbolError(f"{path}: not a text symbol file (not UTF-8) and not an ELF file") from None
