"""``earlymm gdb-script``: where the gdb command file is, so ``source $(earlymm gdb-script)`` works."""

from __future__ import annotations

import argparse
import sys

from earlymm.cli.common import Parser
from earlymm.tools.gdb import script_path


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "gdb-script",
        help="print the path of the gdb command file (earlymm-translate, earlymm-ptdump for live QEMU guests)",
        description="Print the path of earlymm's gdb command file. In gdb attached to QEMU's gdbstub "
                    "(qemu-system-x86_64 -s, then: target remote :1234), run  source PATH  to add "
                    "earlymm-translate and earlymm-ptdump, which read the live guest's page tables from "
                    "guest-physical memory, so they work before the kernel has a direct map. gdb's own "
                    "Python must be 3.10 or newer.")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    path = script_path()
    if not path.is_file():  # a broken install: say so rather than print a path gdb cannot source
        sys.stderr.write(f"earlymm gdb-script: error: {path} is missing from the installed package\n")
        return 1
    sys.stdout.write(f"{path}\n")
    return 0
