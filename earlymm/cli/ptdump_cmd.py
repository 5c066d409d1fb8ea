"""``earlymm ptdump IMAGE [--cr3 X ...] [--format linux|qemu-mem|qemu-tlb|json] [--crlf]`` and its audits."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from earlymm.arch.modes import Features
from earlymm.cli.common import Parser, UsageError, hexint
from earlymm.images import ImageError, open_image
from earlymm.tools.machine_view import RegOverrides, SetupError, infer_registers
from earlymm.tools.ptdump import render
from earlymm.tools.ptdump.engine import DEFAULT_MAX_LEAVES, DEFAULT_MAX_TABLES
from earlymm.tools.ptdump.render import FORMATS
from earlymm.tools.ptdump.space import Space, open_space

EXIT_FINDINGS = 1


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("ptdump", help="list every mapping of an address space (Linux / QEMU / JSON), or audit it",
                       description="Walk every present leaf of the page tables in a QEMU core or raw image and "
                                   "print them as Linux's debugfs page_tables, QEMU's 'info tlb' / 'info mem', or "
                                   "JSON runs with effective rights; or audit them (W+X, user/kernel isolation).")
    p.add_argument("image", help="QEMU dump-guest-memory ELF core, or raw image (offset = physical address)")
    p.add_argument("--cr3", type=hexint, action="append",
                   help="top-level table (repeat to dump several address spaces; default: the CPU note's)")
    for r in ("cr0", "cr4"):
        p.add_argument(f"--{r}", type=hexint, help=f"{r.upper()} (default: from the image's CPU note)")
    p.add_argument("--efer", type=hexint, help="EFER (QEMU does not record it; default: long mode with NXE when "
                                               "the CPU note shows 64-bit code)")
    p.add_argument("--format", choices=FORMATS, default="linux", help="output format (default linux)")
    p.add_argument("--crlf", action="store_true", help="end lines with \\r\\n, as QEMU's monitor does")
    p.add_argument("--check-wx", action="store_true",
                   help="report writable+executable mappings as the kernel's boot-time W+X check does")
    p.add_argument("--check-user-kernel", action="store_true",
                   help="report user/kernel isolation problems (ret2usr surface, kernel memory left in a PTI "
                        "user page table, user-accessible kernel pages)")
    p.add_argument("--maxphyaddr", type=int, default=52)
    p.add_argument("--features", default="all", help="CPU features: all, none, or a list like nx,gbpages,-smap")
    p.add_argument("--absent", choices=("zero", "error"), default="error",
                   help="memory the image lacks: read as zeros, or report it as unreadable (default)")
    p.add_argument("--cpu", type=int, default=0, help="which CPU's registers to use (default 0)")
    p.add_argument("--max-tables", type=int, default=DEFAULT_MAX_TABLES,
                   help=f"read at most this many distinct tables (default {DEFAULT_MAX_TABLES})")
    p.add_argument("--max-leaves", type=int, default=DEFAULT_MAX_LEAVES,
                   help=f"beyond this many leaves, collapse repeated subtrees (default {DEFAULT_MAX_LEAVES})")
    p.set_defaults(func=main)


def _open(path: str) -> Any:
    try:
        return open_image(path)
    except ImageError as e:
        if "truncated" not in str(e) and "corrupt gzip" not in str(e):
            raise UsageError(str(e)) from None
        from earlymm.tools.ptdump.partial import open_partial  # only a damaged core needs it

        try:
            image = open_partial(path)
        except ImageError as e2:
            raise UsageError(str(e2)) from None
        for lo, hi in image.missing:
            _warn(f"{path}: truncated: physical [{lo:#x}, {hi:#x}) is missing from the file")
        if not image.missing:
            _warn(f"{path}: truncated (only CPU notes were lost)")
        return image


def _warn(text: str) -> None:
    sys.stderr.write(f"earlymm ptdump: {text}\n")


def main(args: argparse.Namespace) -> int:
    for name in ("max_tables", "max_leaves"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    try:
        features = Features.parse(args.features, args.maxphyaddr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    image = _open(args.image)
    cpus = getattr(image, "cpus", [])
    if cpus and not 0 <= args.cpu < len(cpus):
        raise UsageError(f"--cpu {args.cpu}: the image has {len(cpus)} CPU(s)")
    note = cpus[args.cpu] if cpus else None
    spaces: list[Space] = []
    for cr3 in args.cr3 or [None]:
        try:
            regs = infer_registers(note, RegOverrides(args.cr0, cr3, args.cr4, args.efer))
            spaces.append(open_space(image, regs, features, absent_zero=args.absent == "zero"))
        except SetupError as e:
            raise UsageError(str(e)) from None
    try:
        if args.check_wx or args.check_user_kernel:
            out = render.run_audits(spaces, check_wx=args.check_wx, check_user_kernel=args.check_user_kernel)
        else:
            out = render.dump(spaces, args.format, args.image, crlf=args.crlf, max_tables=args.max_tables,
                              max_leaves=args.max_leaves)
    except render.RenderError as e:
        raise UsageError(str(e)) from None
    sys.stdout.write(out.text)
    for m in out.messages:
        # audit logs are plain lines (as before); engine notes carry the command's prefix
        sys.stderr.write(f"{m}\n" if args.check_wx or args.check_user_kernel else f"earlymm ptdump: {m}\n")
    return EXIT_FINDINGS if out.findings else 0
