"""``earlymm translate IMAGE VA...``"""

from __future__ import annotations

import argparse
import sys

from earlymm.arch.addr import parse_int
from earlymm.arch.modes import Features
from earlymm.cli.common import Parser, UsageError, hexint
from earlymm.hw.access import AccessKind
from earlymm.images import ImageError, open_image
from earlymm.tools.machine_view import RegOverrides, SetupError, infer_registers, make_cpu
from earlymm.tools.translate import Request, run, to_json, to_text


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("translate", help="walk the page tables of a memory image for given accesses",
                       description="Translate virtual addresses in a QEMU core or raw image, explaining the walk.")
    p.add_argument("image", help="QEMU dump-guest-memory ELF core, or raw image (offset = physical address)")
    p.add_argument("va", nargs="*", help="virtual addresses (hex with 0x, or decimal)")
    for r in ("cr0", "cr3", "cr4", "efer"):
        p.add_argument(f"--{r}", type=hexint, help=f"{r.upper()} (default: from the image's CPU note)")
    p.add_argument("--access", default="read", help="read, write or exec (default read)")
    p.add_argument("--cpl", type=int, choices=(0, 3), default=0)
    p.add_argument("--ac", action="store_true", help="EFLAGS.AC=1 (SMAP override for explicit accesses)")
    p.add_argument("--pkru", type=hexint, default=0)
    p.add_argument("--pkrs", type=hexint, default=0)
    p.add_argument("--maxphyaddr", type=int, default=52)
    p.add_argument("--features", default="all", help="CPU features: all, none, or a list like nx,gbpages,-smap")
    p.add_argument("--absent", choices=("zero", "error"), default="error",
                   help="memory the image lacks: read as zeros, or report the walk as unreadable (default)")
    p.add_argument("--cpu", type=int, default=0, help="which CPU's registers to use (default 0)")
    p.add_argument("--tlb", action="store_true", help="keep a TLB between accesses (walks then may not show)")
    p.add_argument("--batch", help="JSON Lines file of accesses: {\"va\": \"0x…\", \"access\": \"read\", \"cpl\": 0}")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per access")
    p.set_defaults(func=main)


def _requests(args: argparse.Namespace) -> list[Request]:
    if args.batch and args.va:
        raise UsageError("give virtual addresses either as arguments or with --batch, not both")
    if args.batch:
        return read_batch(args.batch)
    if not args.va:
        raise UsageError("no virtual address given (or use --batch FILE)")
    try:
        kind = AccessKind.parse(args.access)
        return [Request(parse_int(v), kind, args.cpl, args.ac) for v in args.va]
    except ValueError as e:
        raise UsageError(str(e)) from None


def read_batch(path: str) -> list[Request]:
    import json  # JSON only for batches and --json: a plain translation does without loading it

    out = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read batch file {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or "va" not in obj:
                raise ValueError('each line must be an object with "va"')
            va = parse_int(obj["va"]) if isinstance(obj["va"], str) else int(obj["va"])
            if not 0 <= va < 1 << 64:
                raise ValueError(f"va {va:#x} out of range")
            cpl = int(obj.get("cpl", 0))
            if cpl not in (0, 3):
                raise ValueError("cpl must be 0 or 3")
            out.append(Request(va, AccessKind.parse(str(obj.get("access", "read"))), cpl, bool(obj.get("ac", False))))
        except (ValueError, TypeError) as e:
            raise UsageError(f"{path}:{n}: {e}") from None
    if not out:
        raise UsageError(f"{path}: no accesses in the batch file")
    return out


def main(args: argparse.Namespace) -> int:
    requests = _requests(args)
    try:
        features = Features.parse(args.features, args.maxphyaddr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        image = open_image(args.image)
    except ImageError as e:
        raise UsageError(str(e)) from None
    cpus = getattr(image, "cpus", [])
    if cpus and not 0 <= args.cpu < len(cpus):
        raise UsageError(f"--cpu {args.cpu}: the image has {len(cpus)} CPU(s)")
    note = cpus[args.cpu] if cpus else None
    try:
        regs = infer_registers(note, RegOverrides(args.cr0, args.cr3, args.cr4, args.efer))
        cpu = make_cpu(image, regs, features, absent_zero=args.absent == "zero", tlb=args.tlb,
                       pkru=args.pkru, pkrs=args.pkrs)
    except SetupError as e:
        raise UsageError(str(e)) from None
    outcomes = run(cpu, requests)
    if args.json:
        import json

        json.dump([to_json(cpu, o) for o in outcomes], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n\n".join(to_text(cpu, o) for o in outcomes) + "\n")
    return 0
