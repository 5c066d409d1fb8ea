"""``earlymm-ptdump``: the ptdump engine (``earlymm.tools.ptdump``) over the live guest.

The same formats and audits as ``earlymm ptdump IMAGE``, with the image replaced by guest-physical
memory read through QEMU's gdbstub and the CPU note replaced by the vCPU's registers. Every table is
read in physical-memory mode, once per command (the frame source caches), so the dump works while the
guest has no direct map and costs one round of reads per distinct table, however often it is aliased.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from earlymm.tools.gdb.commands import (
    MEMORY_MAP_NOTE,
    CommandError,
    CommandParser,
    LiveMachine,
    Output,
    add_machine_options,
    hexint,
    read_machine,
)
from earlymm.tools.gdb.physmem import GdbPhysFrames
from earlymm.tools.gdb.target import LiveTarget, TargetError
from earlymm.tools.machine_view import SetupError
from earlymm.tools.ptdump import audit, linux, qemu, regions
from earlymm.tools.ptdump.engine import DEFAULT_MAX_LEAVES, DEFAULT_MAX_TABLES, Note, Tree, expand
from earlymm.tools.ptdump.runs import json_text, space_json
from earlymm.tools.ptdump.space import Space, open_space

PTDUMP = "earlymm-ptdump"
FORMATS = ("linux", "qemu-tlb", "qemu-mem", "json")
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
    p.add_argument("--max-tables", type=int, default=DEFAULT_MAX_TABLES,
                   help=f"read at most this many distinct tables (default {DEFAULT_MAX_TABLES})")
    p.add_argument("--max-leaves", type=int, default=DEFAULT_MAX_LEAVES,
                   help=f"beyond this many leaves, collapse repeated subtrees (default {DEFAULT_MAX_LEAVES})")
    p.add_argument("--output", metavar="FILE",
                   help="write the dump to FILE instead of gdb's screen (a full dump has ~100k lines)")
    return p


def _note_text(n: Note, prefix: str) -> str:
    more = f", {n.leaves} leaves not listed" if n.leaves else ""
    return f"{prefix}{n.kind} 0x{n.start:016x}-0x{n.end:016x}: {n.detail}{more}"


def _text(space: Space, fmt: str, max_tables: int, max_leaves: int) -> tuple[str, Tree]:
    """Same rendering as ``earlymm ptdump`` for the text formats."""
    if fmt == "linux":
        if not space.mode.is_ia32e:
            raise CommandError(f"--format linux follows the x86-64 kernel's dump: {space.mode.value} paging has "
                               "no such layout (use qemu-tlb, qemu-mem or json)")
        tree = space.tree("linux", keep_nonpresent=True, max_tables=max_tables)
        layout = regions.detect(expand(tree, max_leaves=max_leaves), [r.span for r in tree.sem.rows],
                                len(tree.sem.rows) == 5)
        text, _wx = linux.dump(tree, layout.markers())
        return text, tree
    tree = space.tree("qemu", max_tables=max_tables)
    if fmt == "qemu-tlb":
        return qemu.tlb_text(tree, False, max_leaves), tree
    return qemu.mem_text(tree, False, max_leaves), tree


def _audit(args: argparse.Namespace, spaces: list[Space]) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    log: list[str] = []
    for space in spaces:
        if not space.mode.is_ia32e:
            raise CommandError(f"the audits follow the x86-64 kernel: {space.mode.value} paging is not audited")
        layout = audit.layout_of(space)
        for check, on in ((audit.check_wx, args.check_wx), (audit.check_user_kernel, args.check_user_kernel)):
            if on:
                findings, more = check(space, layout)
                lines += [f.line() for f in findings if not f.expected]
                # By design (what PTI shares with user mode): shown, not counted, as earlymm ptdump does.
                log += [f"expected: {f.line()}" for f in findings if f.expected] + more
    return lines, log


def _render(args: argparse.Namespace, spaces: list[Space]) -> tuple[str, list[str]]:
    if args.check_wx or args.check_user_kernel:
        findings, log = _audit(args, spaces)
        return "".join(f"{ln}\n" for ln in findings), [*log, f"{len(findings)} finding(s)"]
    out: list[str] = []
    notes: list[str] = []
    if args.format == "json":
        docs = []
        for space in spaces:
            tree = space.tree("arch", max_tables=args.max_tables)
            docs.append(space_json(tree, expand(tree, max_leaves=args.max_leaves), space.cr3))
            notes += [_note_text(n, f"cr3 {space.cr3:#x}: " if len(spaces) > 1 else "") for n in tree.notes]
        return json_text(LIVE_IMAGE, docs), notes
    for space in spaces:
        prefix = f"cr3 {space.cr3:#x}: " if len(spaces) > 1 else ""
        if len(spaces) > 1:
            out.append(f"# cr3 {space.cr3:#x}\n")
        text, tree = _text(space, args.format, args.max_tables, args.max_leaves)
        out.append(text)
        notes += [_note_text(n, prefix) for n in tree.notes]
    return "".join(out), notes


def ptdump(target: LiveTarget, argv: list[str]) -> Output:
    """``earlymm-ptdump``: the dump (or audit findings) to print. Raises CommandError or HelpRequested."""
    args = ptdump_parser().parse_args(argv)
    for name in ("max_tables", "max_leaves"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    try:
        machines: list[LiveMachine] = [read_machine(target, args, cr3) for cr3 in args.cr3 or [None]]
        ram = target.ram_ranges()
        with target.physical_memory() as read:
            frames = GdbPhysFrames(read, ram)  # shared by every address space: tables are read once
            try:
                # absent_zero=False: tables in holes (MMIO, no RAM) are reported unreadable, not as zeros.
                spaces = [open_space(frames, m.regs, m.features, absent_zero=False) for m in machines]
            except SetupError as e:
                raise CommandError(str(e)) from None
            text, notes = _render(args, spaces)
    except TargetError as e:
        raise CommandError(str(e)) from None
    messages = [*machines[0].notes, *([] if ram is not None else [MEMORY_MAP_NOTE]), *notes]
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as e:
            raise CommandError(f"cannot write {args.output}: {e}") from None
        return Output(f"{text.count(chr(10))} lines written to {args.output}\n", tuple(messages))
    return Output(text, tuple(messages))
