"""Argument parsing shared by the sub-commands: one-line errors, exit 2, no tracebacks."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from earlymm.arch.addr import parse_int
from earlymm.tools.argtypes import hexint

__all__ = ["EXIT_CRASH", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "Parser", "UsageError", "hexint", "parse_size",
           "size_arg"]

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input from the user; printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """``4G``, ``64T``, ``512M``, ``0x1000`` or plain bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    if t.startswith("0X"):
        return parse_int(t)
    unit = t[-1:] if t[-1:] in SIZE_UNITS else ""
    num = t[:-1] if unit else t
    try:
        value = float(num) if "." in num else int(num, 10)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 4G, 64T, 512M)") from None
    n = int(value * SIZE_UNITS[unit])
    if n <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return n


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
