"""``earlymm rmap IMAGE PA [--cr3 X ...]``: every virtual address mapping a physical address."""

from __future__ import annotations

import argparse
import json
import sys

from earlymm.arch.addr import parse_int
from earlymm.arch.modes import Features
from earlymm.cli.common import EXIT_INCOMPLETE, Parser, UsageError, add_max_inflate, hexint
from earlymm.cli.image_opts import add_regs_arg, cpu_notes
from earlymm.cli.symbols_args import add_symbol_args, load_symbolizer, resolve_address
from earlymm.images import ImageError, open_image
from earlymm.tools.address_spaces import image_spaces
from earlymm.tools.argtypes import int_range
from earlymm.tools.machine_view import RegOverrides, SetupError, image_source
from earlymm.tools.ptdump.engine import DEFAULT_MAX_TABLES
from earlymm.tools.rmap import SAMPLES, search
from earlymm.tools.rmap_report import SpaceAnswer, text, to_json
from earlymm.tools.symbols.kaslr import Walker

EPILOG = ("Address spaces: every CPU note's CR3 (or --regs), the PTI partner of each (the user page table of a "
          "kernel PGD, or the reverse), and every --cr3. Exit status: 0 answered (mapped or not), 2 bad input, 3 "
          f"internal error, {EXIT_INCOMPLETE} incomplete: a table could not be read, so mappings through it are "
          "unknown ('incomplete:' lines say which).")


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("rmap", help="every virtual address that maps a physical address, in every address space",
                       description="List every VA mapping the physical address PA, with the walk's entries and "
                                   "effective rights, in each address space the image holds. Aliases through the "
                                   "same tables (espfix's 65,536) are one group with a count.", epilog=EPILOG)
    p.add_argument("image", help="QEMU dump-guest-memory ELF core, or raw image (offset = physical address)")
    p.add_argument("pa", help="physical address (0x… or decimal), or with --symbols a kernel symbol, whose "
                              "physical address is found through the first address space")
    p.add_argument("--cr3", type=hexint, action="append", default=[],
                   help="another top-level table to search (repeatable)")
    for r in ("cr0", "cr4", "efer"):
        p.add_argument(f"--{r}", type=hexint, help=f"{r.upper()} for every space (default: from the CPU notes)")
    p.add_argument("--max-aliases", type=int_range(1, SAMPLES, "--max-aliases"), default=8,
                   help=f"list a group of aliases one VA per line up to this many (default 8, at most {SAMPLES})")
    p.add_argument("--maxphyaddr", type=int_range(32, 52, "MAXPHYADDR"), default=52)
    p.add_argument("--features", default="all", help="CPU features: all, none, or a list like nx,gbpages,-smap")
    p.add_argument("--absent", choices=("zero", "error"),
                   help="memory the image lacks: read as zeros, or report it unreadable (default: as the image says)")
    p.add_argument("--max-tables", type=int_range(1, 1 << 24, "--max-tables"), default=DEFAULT_MAX_TABLES,
                   help=f"read at most this many distinct tables per space (default {DEFAULT_MAX_TABLES})")
    add_regs_arg(p)
    add_symbol_args(p)
    add_max_inflate(p)
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        features = Features.parse(args.features, args.maxphyaddr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        image = open_image(args.image, max_inflated=args.max_inflate)
    except ImageError as e:
        raise UsageError(str(e)) from None
    source, absent_zero = image_source(image, args.absent)
    try:
        spaces = image_spaces(source, cpu_notes(image, args.regs), args.cr3,
                              RegOverrides(args.cr0, None, args.cr4, args.efer), features, absent_zero=absent_zero)
    except SetupError as e:
        raise UsageError(str(e)) from None
    first = spaces[0].space
    walker = Walker(first.mem, first.mode, first.cr3, first.cr4, first.plan.nxe)
    sym = load_symbolizer(args, walker, "rmap")
    pa = _physical(args.pa, sym, walker)
    answers = [SpaceAnswer(n, search(n.space.tree("arch", max_tables=args.max_tables), pa)) for n in spaces]
    if args.json:
        json.dump(to_json(args.image, pa, answers, sym), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text(pa, answers, sym, args.max_aliases))
    return 0 if all(a.found.complete for a in answers) else EXIT_INCOMPLETE


def _physical(token: str, sym: object, walker: Walker) -> int:
    try:
        return parse_int(token, bits=52, what="physical address")
    except ValueError as e:
        if sym is None:
            resolve_address(token, None)  # the message for a name without --symbols
            raise UsageError(str(e)) from None
    from earlymm.tools.symbols.kaslr import Symbolizer

    assert isinstance(sym, Symbolizer)
    va = resolve_address(token, sym)
    pa = walker.va_to_pa(va)
    if pa is None:
        raise UsageError(f"{token} is at VA {va:#x}, which the first address space (cr3 {walker.cr3:#x}) does not map")
    return pa
