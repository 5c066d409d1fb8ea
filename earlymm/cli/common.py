"""Argument parsing shared by the sub-commands: one-line errors, exit 2, no tracebacks."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import NoReturn

from earlymm.arch.addr import parse_int
from earlymm.tools.argtypes import hexint

__all__ = ["EXIT_CRASH", "EXIT_INCOMPLETE", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "Parser", "UsageError",
           "add_max_inflate", "hexint", "parse_size", "size_arg", "size_text"]

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INCOMPLETE = 4  # an audit could not read every table it needed (and found nothing in the rest)


class UsageError(Exception):
    """Bad input from the user; printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse builds a formatter for every add_argument (to check the metavar) and sizes it to the
        # terminal with shutil, whose import (bz2, lzma, fnmatch) is a noticeable part of a command's
        # start-up; the same width, found as shutil.get_terminal_size finds it, without that import.
        return self.formatter_class(prog=self.prog, width=terminal_columns() - 2)  # type: ignore[call-arg]  # every stdlib formatter takes width


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else the terminal of stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?([KMGTPE]?)(?:I?B)?")
SIZE_EXPECTED = "use e.g. 4G, 64T, 512M, 1.5G, 0x1000 or a byte count; no signs or exponents"


def size_text(n: int) -> str:
    """``64 TiB``, ``2 MiB``, ``4096 bytes``: a size in the user's terms."""
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and not n % (1 << shift):
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def parse_size(text: str, *, limit: int = 1 << 64) -> int:
    """``4G``, ``64T``, ``512M``, ``1.5G``, ``0x1000`` or plain bytes: a positive whole number of bytes
    of at most ``limit``. Computed exactly (no floats): ``1.0e400`` or ``0.3K`` are refused, not rounded."""
    t = text.strip()
    if t[:2].lower() == "0x" or t.isdigit() or not t.isascii():
        n = parse_int(t, what="size")
    else:
        m = _SIZE_RE.fullmatch(t.upper())
        if m is None or len(m[1]) + len(m[2] or "") > 40:
            raise ValueError(f"not a size: {text!r} ({SIZE_EXPECTED})")
        from fractions import Fraction  # only a size with a fraction needs it (start-up time)

        frac = m[2] or ""
        value = Fraction(int(m[1] + frac), 10 ** len(frac)) * SIZE_UNITS[m[3]]
        if value.denominator != 1:
            raise ValueError(f"size {text!r} is not a whole number of bytes")
        n = int(value)
    if n <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    if n > limit:
        raise ValueError(f"size {text!r} is more than {size_text(limit)}")
    return n
def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_max_inflate(p: argparse.ArgumentParser) -> None:
    """``--max-inflate SIZE``: the gzip-bomb guard of the image readers."""
    from earlymm.images.inflate import DEFAULT_MAX_INFLATED

    default = size_text(DEFAULT_MAX_INFLATED)
    p.add_argument("--max-inflate", type=size_arg, default=DEFAULT_MAX_INFLATED, metavar="SIZE",
                   help=f"refuse a .gz image that inflates to more than SIZE (default {default}; "
                        "uncompressed images have no limit: they are mapped, not inflated)")
