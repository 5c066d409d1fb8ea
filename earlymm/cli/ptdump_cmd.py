"""``earlymm ptdump IMAGE [--cr3 X ...] [--format linux|qemu-mem|qemu-tlb|json] [--crlf]`` and its audits."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from earlymm.arch.modes import Features
from earlymm.cli.common import Parser, UsageError, hexint
from earlymm.images import ImageError, open_image
from earlymm.tools.machine_view import RegOverrides, SetupError, infer_registers
from earlymm.tools.ptdump import audit, linux, qemu, regions
from earlymm.tools.ptdump.engine import DEFAULT_MAX_LEAVES, DEFAULT_MAX_TABLES, Note, Tree, expand
from earlymm.tools.ptdump.partial import open_partial
from earlymm.tools.ptdump.runs import json_text, space_json
from earlymm.tools.ptdump.space import Space, open_space

FORMATS = ("linux", "qemu-tlb", "qemu-mem", "json")
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


def _report(tree: Tree, prefix: str) -> None:
    for n in tree.notes:
        _warn(f"{prefix}{_note_text(n)}")


def _note_text(n: Note) -> str:
    more = f", {n.leaves} leaves not listed" if n.leaves else ""
    return f"{n.kind} 0x{n.start:016x}-0x{n.end:016x}: {n.detail}{more}"


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
    if args.check_wx or args.check_user_kernel:
        return _audit(args, spaces)
    if args.format == "linux" and not spaces[0].mode.is_ia32e:
        raise UsageError(f"--format linux follows the x86-64 kernel's dump: {spaces[0].mode.value} paging has "
                         "no such layout (use qemu-tlb, qemu-mem or json)")
    docs = []
    for space in spaces:
        header = f"cr3 {space.cr3:#x}: " if len(spaces) > 1 else ""
        if args.format == "json":
            tree = space.tree("arch", max_tables=args.max_tables)
            docs.append(space_json(tree, expand(tree, max_leaves=args.max_leaves), space.cr3))
            _report(tree, header)
            continue
        text, tree = _text(args, space)
        if len(spaces) > 1:
            sys.stdout.write(f"# {header.rstrip(': ')}{chr(13) if args.crlf else ''}\n")
        sys.stdout.write(text)
        _report(tree, header)
    if docs:
        sys.stdout.write(json_text(args.image, docs))
    return 0


def _text(args: argparse.Namespace, space: Space) -> tuple[str, Tree]:
    if args.format == "linux":
        tree = space.tree("linux", keep_nonpresent=True, max_tables=args.max_tables)
        layout = regions.detect(expand(tree, max_leaves=args.max_leaves), [r.span for r in tree.sem.rows],
                                len(tree.sem.rows) == 5)
        text, _wx = linux.dump(tree, layout.markers())
        return (text.replace("\n", "\r\n") if args.crlf else text), tree
    tree = space.tree("qemu", max_tables=args.max_tables)
    if args.format == "qemu-tlb":
        return qemu.tlb_text(tree, args.crlf, args.max_leaves), tree
    return qemu.mem_text(tree, args.crlf, args.max_leaves), tree


def _audit(args: argparse.Namespace, spaces: list[Space]) -> int:
    found = 0
    for space in spaces:
        if not space.mode.is_ia32e:
            raise UsageError(f"the audits follow the x86-64 kernel: {space.mode.value} paging is not audited")
        layout = audit.layout_of(space)
        checks = [c for c, on in ((audit.check_wx, args.check_wx), (audit.check_user_kernel, args.check_user_kernel))
                  if on]
        for check in checks:
            findings, log = check(space, layout)
            for f in findings:
                if f.expected:  # by design (PTI's shares): shown, not counted
                    sys.stderr.write(f"expected: {f.line()}\n")
                else:
                    sys.stdout.write(f.line() + "\n")
            for line in log:
                sys.stderr.write(line + "\n")
            found += sum(not f.expected for f in findings)
    return EXIT_FINDINGS if found else 0
