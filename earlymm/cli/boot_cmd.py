"""``earlymm boot`` (the early-boot model lands with the next issue)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("boot", help="run Linux's x86-64 early boot on the simulated machine")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    sys.stderr.write("earlymm boot: not yet implemented\n")
    return 1
