"""``earlymm translate IMAGE VA...``"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from earlymm.arch.modes import Features, PagingMode
from earlymm.cli.batch import BatchError, Item, read_batch
from earlymm.cli.common import Parser, UsageError, add_max_inflate, hexint
from earlymm.cli.image_opts import add_regs_arg, cpu_notes, pick
from earlymm.cli.symbols_args import add_symbol_args, load_symbolizer, resolve_address
from earlymm.hw.access import AccessKind
from earlymm.images import ImageError, open_image
from earlymm.tools import gva2gpa as g2g
from earlymm.tools.argtypes import cpl_arg, int_range, uint_bits
from earlymm.tools.machine_view import RegOverrides, SetupError, image_source, infer_registers, make_cpu
from earlymm.tools.ptdump.semantics import tool_semantics
from earlymm.tools.symbols.kaslr import Symbolizer, Walker
from earlymm.tools.translate import Request, run, to_json, to_text

ABSENT_HELP = ("memory the image lacks: read as zeros (what QEMU does), or report the walk as unreadable; default: "
               "zero for a core whose EARLYMM note says it is complete (earlymm boot --save-core), else error")


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("translate", help="walk the page tables of a memory image for given accesses",
                       description="Translate virtual addresses in a QEMU core or raw image, explaining the walk. "
                                   "Give addresses after the image (use -- before them if one could look like an "
                                   "option) or with --batch.")
    p.add_argument("image", help="QEMU dump-guest-memory ELF core, or raw image (offset = physical address); "
                                 ".gz is inflated into a sparse temporary file")
    p.add_argument("va", nargs="*", help="virtual addresses: 0x and hex digits, or decimal digits (zero-padded "
                                         "digits without 0x are refused as ambiguous); with --symbols also a "
                                         "symbol or symbol+OFFSET")
    for r in ("cr0", "cr3", "cr4", "efer"):
        p.add_argument(f"--{r}", type=hexint, help=f"{r.upper()} (default: from the image's CPU note)")
    p.add_argument("--access", help="read, write or exec (default read)")
    p.add_argument("--cpl", type=cpl_arg, help="privilege level of the accesses, 0 or 3 (default: the CPL in the "
                                               "image's CPU note, i.e. SS.DPL as QEMU keeps it — a core stopped "
                                               "in user mode walks at CPL 3 —, or 0 without a note)")
    p.add_argument("--ac", action="store_true", help="EFLAGS.AC=1 (SMAP override for explicit accesses)")
    p.add_argument("--pkru", type=uint_bits(32, "PKRU"), default=0, help="PKRU, 32 bits (default 0)")
    p.add_argument("--pkrs", type=uint_bits(32, "PKRS"), default=0, help="IA32_PKRS, 32 bits (default 0)")
    p.add_argument("--maxphyaddr", type=int_range(32, 52, "MAXPHYADDR"), default=52)
    p.add_argument("--features", default="all", help="CPU features: all, none, or a list like nx,gbpages,-smap")
    p.add_argument("--absent", choices=("zero", "error"), help=ABSENT_HELP)
    p.add_argument("--cpu", type=int_range(0, 1 << 16, "--cpu"), default=0,
                   help="which CPU's registers to use (default 0)")
    p.add_argument("--tlb", action="store_true", help="keep a TLB between accesses (walks then may not show)")
    p.add_argument("--gva2gpa", action="store_true",
                   help="no permission, reserved-bit or feature checks and no A/D writes: answer what QEMU's monitor "
                        "command gva2gpa answers (its debug walk), one line 'VA<TAB>gpa: 0x…' or 'VA<TAB>Unmapped' "
                        "per address, as in a capture's gva2gpa.txt")
    p.add_argument("--batch", help="JSON Lines file of accesses, one object per line: {\"va\": \"0x…\" or an integer, "
                                   "\"access\": \"read\", \"cpl\": 0 or 3, \"ac\": false}; nothing else (with "
                                   "--symbols, \"va\" may be a symbol)")
    add_regs_arg(p)
    add_symbol_args(p)
    add_max_inflate(p)
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per access")
    p.set_defaults(func=main)


def _check_items(args: argparse.Namespace) -> None:
    if args.batch and args.va:
        raise UsageError("give virtual addresses either as arguments or with --batch, not both")
    if not args.batch and not args.va:
        raise UsageError("no virtual address given (or use --batch FILE)")


def _items(args: argparse.Namespace, sym: Symbolizer | None) -> list[Item]:
    if args.batch:
        try:
            return read_batch(args.batch, ("va",) if args.gva2gpa else ("va", "access", "cpl", "ac"),
                              sym.resolve if sym is not None else None)
        except BatchError as e:
            raise UsageError(str(e)) from None
    return [Item(resolve_address(v, sym)) for v in args.va]


def _check_mode(args: argparse.Namespace) -> AccessKind:
    if args.gva2gpa:
        given = [o for o, v in (("--access", args.access), ("--cpl", args.cpl), ("--ac", args.ac or None),
                                ("--tlb", args.tlb or None)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: --gva2gpa checks no permissions, so these do not apply")
    try:
        return AccessKind.parse(args.access or "read")
    except ValueError as e:
        raise UsageError(str(e)) from None


def main(args: argparse.Namespace) -> int:
    kind = _check_mode(args)
    _check_items(args)
    try:
        features = Features.parse(args.features, args.maxphyaddr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        image = open_image(args.image, max_inflated=args.max_inflate)
    except ImageError as e:
        raise UsageError(str(e)) from None
    note, note_efer = pick(cpu_notes(image, args.regs), args.cpu, args.regs)
    source, absent_zero = image_source(image, args.absent)
    efer = args.efer if args.efer is not None else note_efer
    try:
        regs = infer_registers(note, RegOverrides(args.cr0, args.cr3, args.cr4, efer))
        cpu = make_cpu(source, regs, features, absent_zero=absent_zero, tlb=args.tlb, pkru=args.pkru,
                       pkrs=args.pkrs)
    except SetupError as e:
        raise UsageError(str(e)) from None
    plan = cpu.mmu.plan
    sym = load_symbolizer(args, Walker(cpu.mem, plan.mode, regs[1], regs[2], plan.nxe), "translate")
    items = _items(args, sym)
    if args.gva2gpa:
        mode = plan.mode
        sem = None if mode is PagingMode.DISABLED else tool_semantics("gva2gpa", mode, regs[2], plan.nxe)
        answers = [g2g.gva2gpa(cpu.mem, sem, g2g.root_of(mode, regs[1]), it.va) for it in items]
        _emit(args.json, [_g2g_json(a, mode, sym) for a in answers], [_g2g_text(a, sym) for a in answers], "\n")
        return 0
    default_cpl = args.cpl if args.cpl is not None else (note.cpl if note is not None else 0)
    requests = [Request(it.va, it.access if it.access is not None else kind,
                        it.cpl if it.cpl is not None else default_cpl, it.ac if it.ac is not None else args.ac)
                for it in items]
    outcomes = run(cpu, requests)
    _emit(args.json, [to_json(cpu, o, sym) for o in outcomes], [to_text(cpu, o, sym) for o in outcomes], "\n\n")
    return 0


def _g2g_json(a: g2g.Answer, mode: PagingMode, sym: Symbolizer | None) -> dict[str, Any]:
    doc = g2g.to_json(a, mode)
    if sym is not None:
        doc["va_symbol"] = sym.va_label(a.va)
        doc["pa_symbol"] = sym.pa_label(a.pa) if a.pa is not None else None
    return doc


def _g2g_text(a: g2g.Answer, sym: Symbolizer | None) -> str:
    """QEMU's line; with --symbols, ``\t# <va label> → <pa label>`` after it where there are labels."""
    line = g2g.to_text(a)
    if sym is None:
        return line
    va_l, pa_l = sym.va_label(a.va), sym.pa_label(a.pa) if a.pa is not None else None
    if va_l is None and pa_l is None:
        return line
    return f"{line}\t# {va_l or '-'}" + (f" → {pa_l}" if pa_l is not None else "")


def _emit(as_json: bool, docs: list[dict[str, Any]], texts: list[str], sep: str) -> None:
    if as_json:
        import json  # JSON only for --json: a plain translation does without loading it

        json.dump(docs, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(sep.join(texts) + "\n")
