"""argparse value types shared by the command line, the capture tool and the gdb commands.

All numbers are parsed strictly (``earlymm.arch.addr.parse_int``): no signs, separators, Unicode
digits or exponents, and every value is range-checked here, so a bad value is one argparse error
line in the user's terms — never a traceback, never a silently different number.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from earlymm.arch.addr import parse_int


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr and exits 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def hexint(text: str) -> int:
    """A register value or address: ``0x…`` or decimal, at most 64 bits."""
    try:
        return parse_int(text, what="number")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def uint_bits(bits: int, name: str) -> Callable[[str], int]:
    """A ``0x…``/decimal value of a ``bits``-bit register named ``name`` (PKRU is 32 bits, …)."""

    def parse(text: str) -> int:
        try:
            return parse_int(text, bits=bits, what=f"{name} value")
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{e} ({name} is a {bits}-bit register)"
                                             if "does not fit" in str(e) else str(e)) from None

    parse.__name__ = name
    return parse


def int_range(lo: int, hi: int, what: str = "value") -> Callable[[str], int]:
    """A plain decimal integer in ``[lo, hi]`` (``0x…`` accepted too)."""

    def parse(text: str) -> int:
        try:
            v = parse_int(text, what=what)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} {text.strip()} is out of range: must be {lo}..{hi}")
        return v

    parse.__name__ = what
    return parse


def cpl_arg(text: str) -> int:
    """A privilege level as the walk distinguishes them: 0 (supervisor) or 3 (user)."""
    if text.strip() not in ("0", "3"):
        raise argparse.ArgumentTypeError(f"CPL {text!r}: must be 0 (supervisor) or 3 (user)")
    return int(text.strip())


def positive_float(what: str, hi: float) -> Callable[[str], float]:
    """A finite decimal number of seconds etc. in ``(0, hi]`` (no ``inf``, ``nan``, exponents)."""

    def parse(text: str) -> float:
        t = text.strip()
        body = t.replace(".", "", 1)
        if not t.isascii() or not body.isdigit():
            raise argparse.ArgumentTypeError(f"{what} {text!r}: expected a plain decimal number like 240 or 2.5")
        if len(t) > 1 and t[0] == "0" and t[1].isdigit():  # strict numbers (README): zero-padding is refused
            raise argparse.ArgumentTypeError(f"{what} {text!r}: zero-padded numbers are refused as ambiguous")
        v = float(t)
        if not 0 < v <= hi:
            raise argparse.ArgumentTypeError(f"{what} {text!r}: must be above 0 and at most {hi:g}")
        return v

    parse.__name__ = what
    return parse
