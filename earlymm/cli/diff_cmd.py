"""``earlymm diff A B``: what changed between two cores, two CR3s of one core, or two phases of a boot."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from earlymm.arch.modes import Features
from earlymm.cli.common import EXIT_INCOMPLETE, EXIT_USAGE, Parser, UsageError, add_max_inflate, hexint, size_text
from earlymm.cli.image_opts import cpu_notes, pick
from earlymm.cli.symbols_args import add_symbol_args, load_symbolizer
from earlymm.images import ImageError, open_image
from earlymm.tools.argtypes import int_range
from earlymm.tools.diff import report
from earlymm.tools.diff.boot_phase import PREFIX, PhaseState, parse_phase, run_phase
from earlymm.tools.diff.compare import compare
from earlymm.tools.machine_view import RegOverrides, SetupError, image_source, infer_registers
from earlymm.tools.ptdump.audit import GAP_KINDS
from earlymm.tools.ptdump.engine import DEFAULT_MAX_LEAVES, DEFAULT_MAX_TABLES
from earlymm.tools.ptdump.space import Space, open_space
from earlymm.tools.symbols.kaslr import Symbolizer, Walker, symbolizer_for

EXIT_DIFFERENT = 1
NOT_FOR_DIFF = ("--until", "--save-core", "--json", "--trace", "--progress")
EPILOG = (f"A and B are each a memory image (QEMU core or raw) or {PREFIX}PHASE, a phase of earlymm's boot model "
          "(startup_64, x86_64_start_kernel, setup_arch, init_mem_mapping, end) run with --boot-args. For two CR3s "
          "of one core, name the core twice and give --cr3-a/--cr3-b. Exit status, as diff(1): 0 identical, 1 "
          f"differences, 2 bad input, 3 internal error, {EXIT_INCOMPLETE} no difference in what could be read, but "
          "a table could not be (the notes on stderr say where).")


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("diff", help="what changed between two cores, two CR3s or two boot phases",
                       description="Compare two address spaces: mappings added, removed and changed (as runs, old → "
                                   "new physical address, page size and rights), and the table pages that changed "
                                   "(each differing entry).", epilog=EPILOG)
    p.add_argument("a", help=f"the old side: an image path, or {PREFIX}PHASE")
    p.add_argument("b", help=f"the new side: an image path, or {PREFIX}PHASE")
    for side in ("a", "b"):
        p.add_argument(f"--cr3-{side}", type=hexint, help=f"top-level table of {side.upper()} (default: its CPU note)")
        p.add_argument(f"--cpu-{side}", type=int_range(0, 1 << 16, f"--cpu-{side}"), default=0,
                       help=f"which CPU note of {side.upper()} (default 0)")
        p.add_argument(f"--regs-{side}", metavar="FILE",
                       help=f"QEMU's 'info registers' for {side.upper()} (a raw image, or a core without a note)")
    p.add_argument("--boot-args", default="", metavar="ARGS",
                   help="options of 'earlymm boot' for the boot phases, as one string: --boot-args '--mem 8G "
                        "--profile current'")
    p.add_argument("--include-ad", action="store_true",
                   help="count Accessed/Dirty bits as changes (by default they are ignored: the CPU sets them on use)")
    p.add_argument("--maxphyaddr", type=int_range(32, 52, "MAXPHYADDR"), default=52)
    p.add_argument("--features", default="all", help="CPU features: all, none, or a list like nx,gbpages,-smap")
    p.add_argument("--absent", choices=("zero", "error"),
                   help="memory an image lacks: read as zeros, or report it unreadable (default: as the image says)")
    p.add_argument("--max-tables", type=int_range(1, 1 << 24, "--max-tables"), default=DEFAULT_MAX_TABLES)
    p.add_argument("--max-leaves", type=int_range(1, 1 << 32, "--max-leaves"), default=DEFAULT_MAX_LEAVES)
    add_symbol_args(p)
    add_max_inflate(p)
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=main)


def _boot_args(text: str) -> argparse.Namespace:
    from earlymm.cli import boot_cmd

    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"--boot-args: {e}") from None
    bad = [w for w in words if w.split("=", 1)[0] in NOT_FOR_DIFF]
    if bad:
        raise UsageError(f"--boot-args: {bad[0].split('=', 1)[0]} does not apply to diff (the phases are A and B)")
    top = Parser(prog="earlymm diff --boot-args", add_help=False)
    boot_cmd.add_parser(top.add_subparsers(dest="command", parser_class=Parser))
    return top.parse_args(["boot", *words])


def _boot_side(phase_text: str, bargs: argparse.Namespace) -> PhaseState:
    from earlymm.cli import boot_cmd
    try:
        phase = parse_phase(phase_text)
    except ValueError as e:
        raise UsageError(f"{phase_text}: {e}") from None
    assert phase is not None
    if bargs.kernel_at % (2 << 20):
        raise UsageError(f"--boot-args: --kernel-at {bargs.kernel_at:#x} is not 2 MiB aligned")
    if getattr(bargs, "pv", None) == "xen":
        raise UsageError("--boot-args: diff does not compare --pv xen boots yet (use 'earlymm boot --until')")
    if bargs.mem is not None and bargs.mem < 4 << 20:
        raise UsageError(f"--boot-args: --mem {size_text(bargs.mem)} is smaller than the kernel")
    five = boot_cmd.resolve_profile(bargs)  # the same defaults and limits as 'earlymm boot'
    kernel = boot_cmd.kernel_config(bargs, five)
    try:
        state = run_phase(boot_cmd.machine_config(bargs), kernel, phase,
                          bargs.image_size if bargs.image_size is not None else 24 << 20)
    except (ValueError, SetupError) as e:
        raise UsageError(str(e)) from None
    if state.crashed:
        sys.stderr.write(f"earlymm diff: note: {phase_text}: the boot ended before it ({state.outcome}: "
                         f"{state.reason}); comparing the machine as it stopped\n")
    return state


def _image_side(path: str, args: argparse.Namespace, side: str, features: Features) -> Space:
    try:
        image = open_image(path, max_inflated=args.max_inflate)
    except ImageError as e:
        raise UsageError(str(e)) from None
    regs_file = getattr(args, f"regs_{side}")
    note, efer = pick(cpu_notes(image, regs_file), getattr(args, f"cpu_{side}"), regs_file)
    source, absent_zero = image_source(image, args.absent)
    try:
        regs = infer_registers(note, RegOverrides(None, getattr(args, f"cr3_{side}"), None, efer))
        return open_space(source, regs, features, absent_zero=absent_zero)
    except SetupError as e:
        raise UsageError(f"{side.upper()} ({path}): {e}") from None


def main(args: argparse.Namespace) -> int:
    try:
        features = Features.parse(args.features, args.maxphyaddr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    booting = [s for s in (args.a, args.b) if s.startswith(PREFIX)]
    for operand in booting:  # both operands are checked before either side costs a boot or a read
        try:
            parse_phase(operand)
        except ValueError as e:
            raise UsageError(f"{operand}: {e}") from None
    if args.boot_args and not booting:
        raise UsageError(f"--boot-args applies to {PREFIX}PHASE operands, and neither A nor B is one")
    try:
        bargs = _boot_args(args.boot_args) if booting else None
    except SystemExit as e:  # the boot parser printed its one-line error (or --help)
        return int(e.code or 0) if e.code in (0, None) else EXIT_USAGE
    spaces: list[Space] = []
    model: PhaseState | None = None
    for side, operand in (("a", args.a), ("b", args.b)):
        for opt in ("cr3", "regs"):
            if operand.startswith(PREFIX) and getattr(args, f"{opt}_{side}") is not None:
                raise UsageError(f"--{opt}-{side} applies to an image, and {side.upper()} is {operand}")
        if operand.startswith(PREFIX):
            assert bargs is not None
            model = _boot_side(operand, bargs)
            spaces.append(model.space)
        else:
            spaces.append(_image_side(operand, args, side, features))
    sa, sb = spaces
    d = compare(sa, sb, max_tables=args.max_tables, max_leaves=args.max_leaves, include_ad=args.include_ad)
    sym = _symbols(args, sb, model)
    describe = [_describe(o, s) for o, s in ((args.a, sa), (args.b, sb))]
    if args.json:
        doc = report.to_json(describe[0], describe[1], d, sb.mode, sym)
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.text(_label(describe[0]), _label(describe[1]), d, sb.mode, sym))
    for n in report.notes(d):
        sys.stderr.write(f"earlymm diff: {n}\n")
    gaps = any(n.kind in GAP_KINDS for n in (*d.notes_a, *d.notes_b))
    return EXIT_DIFFERENT if not d.identical else EXIT_INCOMPLETE if gaps else 0


def _symbols(args: argparse.Namespace, sb: Space, model: PhaseState | None) -> Symbolizer | None:
    walker = Walker(sb.mem, sb.mode, sb.cr3, sb.cr4, sb.plan.nxe)
    sym = load_symbolizer(args, walker, "diff")
    if sym is None and model is not None:  # the boot model's own link-time symbols
        sym = symbolizer_for(model.symbols, walker)
    return sym


def _describe(operand: str, s: Space) -> dict[str, Any]:
    return {"source": operand, "cr3": f"{s.cr3:#x}", "mode": s.mode.value}


def _label(d: dict[str, Any]) -> str:
    return f"{d['source']} (cr3 {d['cr3']}, {d['mode']} paging)"
