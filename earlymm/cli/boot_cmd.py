"""``earlymm boot``: run Linux x86-64's early boot on the simulated machine."""

from __future__ import annotations

import argparse
import sys

from earlymm.arch.addr import parse_int
from earlymm.arch.modes import Features
from earlymm.cli.common import EXIT_CRASH, EXIT_OK, Parser, UsageError, hexint, parse_size, size_arg
from earlymm.hw.memory import Region, RegionMap, RegionType
from earlymm.kernel.boot import Phase, boot
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig, PoolAccess, Variant
from earlymm.platform.pc import MachineConfig, pc_e820
from earlymm.tools.boot_report import CRASH_OUTCOMES, render_text, save_core, to_json


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("boot", help="run Linux x86-64's early boot on the simulated machine",
                       description="Run startup_64 → x86_64_start_kernel → setup_arch/init_mem_mapping on the "
                                   "CPU model and tell the story of the page tables.")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--mem", type=size_arg, help="RAM size (4G, 64T …); a PC layout with a hole at 3-4 GiB")
    mem.add_argument("--e820", help="e820 map file: 'START END TYPE' per line (END exclusive; ram, reserved, "
                                    "acpi, nvs, unusable)")
    p.add_argument("--kernel-at", type=hexint, default=0x100_0000, help="physical load address (2 MiB aligned)")
    p.add_argument("--image-size", type=size_arg, default=24 << 20, help="kernel image size _end - _text (24M)")
    p.add_argument("--boot-params-at", type=hexint, default=0x1_4000)
    p.add_argument("--ramdisk", help="ADDR:SIZE (default: 16M near the top of RAM below 2 GiB)")
    p.add_argument("--cmdline", default="root=/dev/sda1 ro console=ttyS0 earlyprintk=serial")
    p.add_argument("--cmdline-at", type=hexint, default=0x2_0000)
    p.add_argument("--profile", choices=sorted(PROFILES), default="v3.9")
    p.add_argument("--pool", type=int, default=64, help="EARLY_DYNAMIC_PAGE_TABLES (default 64)")
    p.add_argument("--variant", choices=[v.value for v in Variant], default="merged")
    p.add_argument("--pool-access", choices=[v.value for v in PoolAccess], default="high-map")
    p.add_argument("--no-nx", action="store_true", help="a CPU without NX (early_pmd_flags lose bit 63)")
    p.add_argument("--force-nx", action="store_true", help="set bit 63 in early_pmd_flags even without NX")
    p.add_argument("--no-gbpages", action="store_true", help="a CPU without 1 GiB pages")
    p.add_argument("--no-pge", action="store_true", help="a CPU without global pages")
    p.add_argument("--until", help="stop after: startup_64, x86_64_start_kernel, setup_arch, init_mem_mapping, end")
    p.add_argument("--save-core", help="write the machine as a QEMU-format ELF core at the end of the run")
    p.add_argument("--trace", action="store_true", help="print every event")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main)


def read_e820(path: str) -> list[Region]:
    kinds = {k.value: k for k in RegionType if k is not RegionType.ABSENT}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read e820 file {path}: {e}") from None
    rm = RegionMap()
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        try:
            if len(parts) != 3:
                raise ValueError("expected 'START END TYPE'")
            start, end = parse_int(parts[0]), parse_int(parts[1])
            if parts[2].lower() not in kinds:
                raise ValueError(f"unknown type {parts[2]!r} (ram, reserved, acpi, nvs, unusable)")
            if end <= start:
                raise ValueError(f"end {end:#x} is not above start {start:#x}")
            rm.add(Region(start, end, kinds[parts[2].lower()]))
        except ValueError as e:
            raise UsageError(f"{path}:{n}: {e}") from None
    if not len(rm):
        raise UsageError(f"{path}: no ranges")
    return list(rm)


STYLES = (("== ", "bold cyan"), ("  [pass]", "green"), ("  [FAIL]", "bold red"), ("outcome: booted", "bold green"),
          ("outcome: stopped", "bold green"), ("outcome:", "bold red"), ("   #PF", "yellow"),
          ("     reset_early", "magenta"), ("   console:", "bold"))


def print_rich(text: str) -> None:
    """The same text, coloured for a terminal (rich), one style per kind of line."""
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    for line in text.splitlines():
        style = next((s for prefix, s in STYLES if line.startswith(prefix)), "")
        console.print(Text(line, style=style))


def machine_config(args: argparse.Namespace) -> MachineConfig:
    e820 = read_e820(args.e820) if args.e820 else pc_e820(args.mem or 4 << 30)
    rd_at, rd_size = None, 16 << 20
    if args.ramdisk:
        try:
            a, _, s = args.ramdisk.partition(":")
            rd_at, rd_size = parse_int(a), parse_size(s) if s else 16 << 20
        except ValueError as e:
            raise UsageError(f"--ramdisk {args.ramdisk!r}: {e} (want ADDR:SIZE)") from None
    feats = Features(nx=not args.no_nx, gbpages=not args.no_gbpages, pge=not args.no_pge, la57=False, pks=False)
    return MachineConfig(e820=tuple(e820), kernel_at=args.kernel_at, boot_params_at=args.boot_params_at,
                         cmdline=args.cmdline, cmdline_at=args.cmdline_at, ramdisk_at=rd_at, ramdisk_size=rd_size,
                         features=feats)


def main(args: argparse.Namespace) -> int:
    until = None
    if args.until:
        try:
            until = Phase.parse(args.until)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if not 1 <= args.pool <= 4096:
        raise UsageError(f"--pool {args.pool}: the pool must have 1..4096 pages")
    if args.kernel_at % (2 << 20):
        raise UsageError(f"--kernel-at {args.kernel_at:#x} is not 2 MiB aligned (startup_64 would spin in "
                         "bad_address; the simulated loader refuses it)")
    if args.mem is not None and args.mem < 4 << 20:
        raise UsageError(f"--mem: {args.mem} bytes is smaller than the kernel")
    machine = machine_config(args)
    kernel = KernelConfig(PROFILES[args.profile], Variant(args.variant), PoolAccess(args.pool_access), args.pool,
                          force_nx=args.force_nx)
    try:
        result = boot(machine, kernel, until=until, trace=True, image_size=args.image_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.save_core:
        from earlymm.images import ImageError  # the images layer only for --save-core

        try:
            save_core(result, args.save_core)
        except (OSError, ValueError, ImageError) as e:
            raise UsageError(f"cannot write core {args.save_core}: {e}") from None
    if args.json:
        import json

        json.dump(to_json(result, events=args.trace), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif sys.stdout.isatty():
        print_rich(render_text(result, trace=args.trace))
    else:
        sys.stdout.write(render_text(result, trace=args.trace) + "\n")
    return EXIT_CRASH if result.outcome in CRASH_OUTCOMES else EXIT_OK
