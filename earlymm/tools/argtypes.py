"""argparse value types shared by the command line and the gdb commands."""

from __future__ import annotations

import argparse

from earlymm.arch.addr import parse_int


def hexint(text: str) -> int:
    """A register value or address: ``0x…`` or decimal, at most 64 bits."""
    try:
        v = parse_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v >= 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in 64 bits")
    return v
