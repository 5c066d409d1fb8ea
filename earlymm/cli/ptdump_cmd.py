"""``earlymm ptdump IMAGE [--cr3 X ...] [--format linux|qemu-mem|qemu-tlb|json] [--crlf]`` and its audits."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from earlymm.arch.modes import Features
from earlymm.cli.common import EXIT_INCOMPLETE, Parser, UsageError, add_max_inflate, hexint
from earlymm.cli.image_opts import add_regs_arg, cpu_notes, pick
from earlymm.cli.symbols_args import add_symbol_args, load_symbolizer
from earlymm.images import ImageError, WriteError, open_image
from earlymm.images.safe_write import SYMLINK_POLICY, check_target
from earlymm.tools.argtypes import int_range
from earlymm.tools.machine_view import RegOverrides, SetupError, image_source, infer_registers
from earlymm.tools.ptdump import render
from earlymm.tools.ptdump.engine import DEFAULT_MAX_LEAVES, DEFAULT_MAX_TABLES
from earlymm.tools.ptdump.render import FORMATS
from earlymm.tools.ptdump.space import Space, open_space
from earlymm.tools.symbols.annotate import annotate
from earlymm.tools.symbols.kaslr import Walker

EXIT_FINDINGS = 1
AUDIT_EPILOG = ("Exit status: 0 success (an audit passed); 1 an audit has findings; 2 bad input; 3 internal error; "
                f"{EXIT_INCOMPLETE} an audit is incomplete: a table it needed could not be read (not in the image, "
                "cut off in a truncated core, beyond --max-tables) or was collapsed, and nothing was found in the "
                "rest. Each range not examined is an 'incomplete: …' line after the findings; an audit says "
                "'passed' only when it read everything.")


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("ptdump", help="list every mapping of an address space (Linux / QEMU / JSON), or audit it",
                       description="Walk every present leaf of the page tables in a QEMU core or raw image and "
                                   "print them as Linux's debugfs page_tables, QEMU's 'info tlb' / 'info mem', or "
                                   "JSON runs with effective rights; or audit them (W+X, user/kernel isolation).",
                       epilog=AUDIT_EPILOG)
    p.add_argument("image", help="QEMU dump-guest-memory ELF core, or raw image (offset = physical address)")
    p.add_argument("--cr3", type=hexint, action="append",
                   help="top-level table (repeat to dump several address spaces; default: the CPU note's)")
    for r in ("cr0", "cr4"):
        p.add_argument(f"--{r}", type=hexint, help=f"{r.upper()} (default: from the image's CPU note)")
    p.add_argument("--efer", type=hexint, help="EFER (QEMU does not record it; default: long mode with NXE when "
                                               "the CPU note shows 64-bit code)")
    p.add_argument("--format", choices=FORMATS, help="output format (default linux; with --html, no dump is printed "
                                                     "unless a format is given)")
    p.add_argument("--crlf", action="store_true", help="end lines with \\r\\n, as QEMU's monitor does")
    p.add_argument("--check-wx", action="store_true",
                   help="report writable+executable mappings as the kernel's boot-time W+X check does")
    p.add_argument("--check-user-kernel", action="store_true",
                   help="report user/kernel isolation problems (ret2usr surface, kernel memory left in a PTI "
                        "user page table, user-accessible kernel pages)")
    p.add_argument("--maxphyaddr", type=int_range(32, 52, "MAXPHYADDR"), default=52)
    p.add_argument("--features", default="all", help="CPU features: all, none, or a list like nx,gbpages,-smap")
    p.add_argument("--absent", choices=("zero", "error"),
                   help="memory the image lacks: read as zeros, or report it as unreadable; default: zero for a core "
                        "whose EARLYMM note says it is complete (earlymm boot --save-core), else error. The cut-off "
                        "part of a truncated core is unreadable either way")
    p.add_argument("--cpu", type=int_range(0, 1 << 16, "--cpu"), default=0,
                   help="which CPU's registers to use (default 0)")
    p.add_argument("--max-tables", type=int_range(1, 1 << 24, "--max-tables"), default=DEFAULT_MAX_TABLES,
                   help=f"read at most this many distinct tables (default {DEFAULT_MAX_TABLES})")
    p.add_argument("--max-leaves", type=int_range(1, 1 << 32, "--max-leaves"), default=DEFAULT_MAX_LEAVES,
                   help=f"beyond this many leaves, collapse repeated subtrees (default {DEFAULT_MAX_LEAVES})")
    add_regs_arg(p)
    add_symbol_args(p)
    p.add_argument("--html", metavar="FILE",
                   help="also write one self-contained HTML page: a zoomable map of the address space coloured by "
                        "effective rights and a page-table tree explorer (FILE: a new or regular file, replaced "
                        f"atomically; {SYMLINK_POLICY})")
    add_max_inflate(p)
    p.set_defaults(func=main)


def _open(path: str, max_inflated: int) -> Any:
    try:
        return open_image(path, max_inflated=max_inflated)
    except ImageError as e:
        if "truncated" not in str(e) and "corrupt gzip" not in str(e):
            raise UsageError(str(e)) from None
        from earlymm.tools.ptdump.partial import open_partial  # only a damaged core needs it

        try:
            image = open_partial(path, max_inflated=max_inflated)
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
    try:
        features = Features.parse(args.features, args.maxphyaddr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.html is not None:
        try:
            check_target(args.html, "HTML file")  # before the work: a bad path should not cost a dump
        except WriteError as e:
            raise UsageError(str(e)) from None
    image = _open(args.image, args.max_inflate)
    note, note_efer = pick(cpu_notes(image, args.regs), args.cpu, args.regs)
    spaces: list[Space] = []
    source, absent_zero = image_source(image, args.absent)
    for cr3 in args.cr3 or [None]:
        try:
            regs = infer_registers(note, RegOverrides(args.cr0, cr3, args.cr4,
                                                      args.efer if args.efer is not None else note_efer))
            spaces.append(open_space(source, regs, features, absent_zero=absent_zero))
        except SetupError as e:
            raise UsageError(str(e)) from None
    s0 = spaces[0]  # symbols are read (and a bad file refused) before the dump's work
    sym = load_symbolizer(args, Walker(s0.mem, s0.mode, s0.cr3, s0.cr4, s0.plan.nxe), "ptdump")
    if args.html is not None:
        from earlymm.tools.html import write_ptdump_html

        try:
            write_ptdump_html(args.html, spaces, args.image, max_tables=args.max_tables)
        except WriteError as e:
            raise UsageError(str(e)) from None
    try:
        if args.check_wx or args.check_user_kernel:
            out = render.run_audits(spaces, check_wx=args.check_wx, check_user_kernel=args.check_user_kernel)
        elif args.html is not None and args.format is None:
            return 0
        else:
            out = render.dump(spaces, args.format or "linux", args.image, crlf=args.crlf, max_tables=args.max_tables,
                              max_leaves=args.max_leaves)
    except render.RenderError as e:
        raise UsageError(str(e)) from None
    audit = args.check_wx or args.check_user_kernel
    parts = out.parts if sym is None else annotate(out.parts, "audit" if audit else args.format, sym)
    for part in parts:
        sys.stdout.write(part)
    for m in out.messages:
        # audit logs are plain lines (as before); engine notes carry the command's prefix
        sys.stderr.write(f"{m}\n" if args.check_wx or args.check_user_kernel else f"earlymm ptdump: {m}\n")
    return EXIT_FINDINGS if out.findings else EXIT_INCOMPLETE if out.gaps else 0
