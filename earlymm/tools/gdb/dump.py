"""``earlymm-ptdump``: the ptdump engine (``earlymm.tools.ptdump``) over the live guest.

The same formats and audits as ``earlymm ptdump IMAGE``, with the image replaced by guest-physical
memory read through QEMU's gdbstub and the CPU note replaced by the vCPU's registers. Every table is
read in physical-memory mode, once per command (the frame source caches), so the dump works while the
guest has no direct map and costs one round of reads per distinct table, however often it is aliased.
"""

from __future__ import annotations

import argparse

from earlymm.images.safe_write import SYMLINK_POLICY, WriteError, check_target, write_text
from earlymm.tools.argtypes import hexint, int_range
from earlymm.tools.gdb.commands import (
    MEMORY_MAP_NOTE,
    CommandError,
    CommandParser,
    LiveMachine,
    Output,
    add_machine_options,
    live_symbolizer,
    load_table,
    read_machine,
)
from earlymm.tools.gdb.physmem import GdbPhysFrames
from earlymm.tools.gdb.target import LiveTarget, TargetError
from earlymm.tools.machine_view import SetupError, make_cpu
from earlymm.tools.ptdump import render
from earlymm.tools.ptdump.engine import DEFAULT_MAX_LEAVES, DEFAULT_MAX_TABLES
from earlymm.tools.ptdump.render import FORMATS
from earlymm.tools.ptdump.space import Space, open_space
from earlymm.tools.symbols.annotate import annotate
from earlymm.tools.symbols.kaslr import Symbolizer

PTDUMP = "earlymm-ptdump"
LIVE_IMAGE = "gdb:live"  # the JSON's "image": where an image path would be, say the tables were live


def ptdump_parser() -> CommandParser:
    p = CommandParser(prog=PTDUMP, allow_abbrev=False,
                      description="List every present mapping of the live guest's address space, reading the "
                                  "tables from guest-physical memory (QEMU's physical-memory mode), so it works "
                                  "before the kernel has a direct map. Formats as for 'earlymm ptdump'.")
    p.add_argument("--format", choices=FORMATS, default="linux",
                   help="Linux's debugfs page_tables, QEMU's info tlb / info mem, or JSON runs (default linux)")
    p.add_argument("--cr3", type=hexint, action="append",
                   help="top-level table instead of the vCPU's CR3 (repeat to dump several address spaces)")
    add_machine_options(p, ("cr0", "cr4", "efer"))
    p.add_argument("--check-wx", action="store_true",
                   help="report writable+executable mappings as the kernel's boot-time W+X check does")
    p.add_argument("--check-user-kernel", action="store_true",
                   help="report user/kernel isolation problems (see earlymm ptdump --help)")
    p.add_argument("--max-tables", type=int_range(1, 1 << 24, "--max-tables"), default=DEFAULT_MAX_TABLES,
                   help=f"read at most this many distinct tables (default {DEFAULT_MAX_TABLES})")
    p.add_argument("--max-leaves", type=int_range(1, 1 << 32, "--max-leaves"), default=DEFAULT_MAX_LEAVES,
                   help=f"beyond this many leaves, collapse repeated subtrees (default {DEFAULT_MAX_LEAVES})")
    p.add_argument("--output", metavar="FILE",
                   help="write the dump to FILE instead of gdb's screen (a full dump has ~100k lines). FILE must be "
                        "new or a regular file: devices, FIFOs, sockets and directories are refused, and "
                        f"{SYMLINK_POLICY}; it is replaced atomically, and on any error (a full disk) nothing is left")
    return p


def _render(args: argparse.Namespace, spaces: list[Space], sym: Symbolizer | None) -> tuple[str, list[str]]:
    try:
        if args.check_wx or args.check_user_kernel:
            out = render.run_audits(spaces, check_wx=args.check_wx, check_user_kernel=args.check_user_kernel)
            verdict = f"{out.findings} finding(s)" + (f"; incomplete: {out.gaps} range(s) not examined"
                                                       if out.gaps else "")
            return _text(out.parts, "audit", sym), [*out.messages, verdict]
        out = render.dump(spaces, args.format, LIVE_IMAGE, max_tables=args.max_tables, max_leaves=args.max_leaves)
    except render.RenderError as e:
        raise CommandError(str(e)) from None
    return _text(out.parts, args.format, sym), out.messages


def _text(parts: list[str], fmt: str, sym: Symbolizer | None) -> str:
    return "".join(parts if sym is None else annotate(parts, fmt, sym))


def ptdump(target: LiveTarget, argv: list[str]) -> Output:
    """``earlymm-ptdump``: the dump (or audit findings) to print. Raises CommandError or HelpRequested."""
    args = ptdump_parser().parse_args(argv)
    if args.output is not None:
        try:
            check_target(args.output)  # before reading the guest: a bad path should not cost a dump
        except WriteError as e:
            raise CommandError(str(e)) from None
    table = load_table(args)
    try:
        machines: list[LiveMachine] = [read_machine(target, args, cr3) for cr3 in args.cr3 or [None]]
        ram = target.ram_ranges()
        with target.physical_memory() as read:
            frames = GdbPhysFrames(read, ram)  # shared by every address space: tables are read once
            try:
                # absent_zero=False: tables in holes (MMIO, no RAM) are reported unreadable, not as zeros.
                spaces = [open_space(frames, m.regs, m.features, absent_zero=False) for m in machines]
                sym, sym_notes = (None, ()) if table is None else live_symbolizer(
                    table, args, make_cpu(frames, machines[0].regs, machines[0].features, absent_zero=False))
            except SetupError as e:
                raise CommandError(str(e)) from None
            text, notes = _render(args, spaces, sym)
            notes = [*sym_notes, *notes]
    except TargetError as e:
        raise CommandError(str(e)) from None
    messages = [*machines[0].notes, *([] if ram is not None else [MEMORY_MAP_NOTE]), *notes]
    if args.output is not None:
        try:
            write_text(args.output, text)
        except WriteError as e:
            raise CommandError(str(e)) from None
        return Output(f"{text.count(chr(10))} lines written to {args.output}\n", tuple(messages))
    return Output(text, tuple(messages))
