"""Arguments shared by the boot paths of ``earlymm boot`` (x86-64, Xen PV, i386): the memory map, the
ramdisk, the CPU identity, ``--until``, and how a given option is told from its default."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from itertools import pairwise
from typing import TYPE_CHECKING, Any, TypeVar

from earlymm.arch.addr import parse_int
from earlymm.arch.cpuid import CpuIdentity, Vendor
from earlymm.cli.common import EXIT_CRASH, EXIT_OK, UsageError, parse_size, size_text
from earlymm.hw.memory import Region, RegionMap, RegionType
from earlymm.kernel.phases import Phase
from earlymm.platform.pc import pc_e820

if TYPE_CHECKING:
    from earlymm.cli.trace_writes_args import TraceWrites

R = TypeVar("R")

# The most RAM the modelled 4-level kernel can map: MAXMEM = 1 << MAX_PHYSMEM_BITS (46), 64 TiB (spec §2
# constants table; arch/x86/include/asm/sparsemem.h). The boot model runs 4-level paging only.
MAX_MEM_4LEVEL = 1 << 46
MAX_MEM_5LEVEL = 1 << 52  # MAX_PHYSMEM_BITS 52 in 5-level mode: MAXMEM 4 PiB
E820_MAX_LINE = 4096  # bytes per line of an e820 file: a longer "line" is not an e820 map
E820_MAX_LINES = 5_000_000  # a kernel log is read whole; beyond this it is something else


class DefaultInt(int):
    """An option's default value, told apart from the same value given on the command line (``--arch i386``
    refuses the x86-64 path's options when they are given, and only then)."""


class DefaultStr(str):
    """A string option's default value (see ``DefaultInt``)."""


def given(value: object) -> bool:
    """Whether an option was given: not its default, not an unset flag."""
    return value is not None and value is not False and not isinstance(value, DefaultInt | DefaultStr)


def read_e820(path: str) -> list[Region]:
    """An e820 map file: ``START END TYPE`` per line, ``#`` comments — or a kernel log's ``BIOS-e820:``/``user:``
    lines, or ``/sys/firmware/memmap`` (the directory or its ``grep -r .`` text; ``tools.e820_input``).
    O(n log n) in the number of lines: regions are collected, sorted once and checked against their neighbours."""
    from earlymm.tools.e820_input import E820InputError, read_alternative  # only a boot given --e820 reads one

    kinds: dict[str, RegionType] = {k.value: k for k in RegionType if k is not RegionType.ABSENT}
    try:
        lines = None if os.path.isdir(path) else _e820_lines(path)
        other = read_alternative(path, lines)
    except E820InputError as e:
        raise UsageError(str(e)) from None
    if other is not None:
        found, notes = other
        for note in notes:
            sys.stderr.write(f"earlymm boot: note: {note}\n")
    else:
        found = [(r, n) for n, ln in enumerate(lines or [], 1) if (r := _e820_line(path, n, ln, kinds)) is not None]
    if not found:
        raise UsageError(f"{path}: no ranges")
    found.sort(key=lambda t: (t[0].start, t[0].end))
    for (a, na), (b, nb) in pairwise(found):
        if b.start < a.end:
            first, second = sorted(((a, na), (b, nb)), key=lambda t: t[1])
            raise UsageError(f"{path}:{second[1]}: [{second[0].start:#x}, {second[0].end:#x}) overlaps "
                             f"[{first[0].start:#x}, {first[0].end:#x}) from line {first[1]}")
    try:
        return list(RegionMap(r for r, _n in found))
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from None


def _e820_lines(path: str) -> list[str]:
    out: list[str] = []
    try:
        with open(path, encoding="utf-8", newline=None) as f:
            while line := f.readline(E820_MAX_LINE + 1):
                if len(out) >= E820_MAX_LINES:
                    raise UsageError(f"{path}: more than {E820_MAX_LINES} lines (not an e820 map or a kernel log)")
                if len(line) > E820_MAX_LINE:
                    raise UsageError(f"{path}:{len(out) + 1}: line longer than {E820_MAX_LINE} characters (not an "
                                     "e820 map)")
                out.append(line)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read e820 file {path}: {getattr(e, 'strerror', None) or e}") from None
    return out


def _e820_line(path: str, n: int, line: str, kinds: dict[str, RegionType]) -> Region | None:
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    parts = text.split()
    try:
        if len(parts) != 3:
            raise ValueError("expected 'START END TYPE'")
        start, end = parse_int(parts[0], bits=52, what="start"), parse_int(parts[1], bits=53, what="end")
        if parts[2].lower() not in kinds:
            raise ValueError(f"unknown type {parts[2]!r} (ram, reserved, acpi, nvs, unusable)")
        if end <= start:
            raise ValueError(f"end {end:#x} is not above start {start:#x}")
        if end > 1 << 52:
            raise ValueError(f"end {end:#x} is beyond the 52-bit physical address space")
        return Region(start, end, kinds[parts[2].lower()])
    except ValueError as e:
        raise UsageError(f"{path}:{n}: {e}") from None


def parse_until(text: str, phases: tuple[Phase, ...], arch: str) -> Phase:
    """``--until``: a phase of this architecture's boot path."""
    names = ", ".join(p.value for p in phases)
    try:
        phase = Phase.parse(text)
    except ValueError:
        raise UsageError(f"unknown phase {text!r} (one of: {names})") from None
    if phase not in phases:
        raise UsageError(f"--until {text}: not a phase of the {arch} boot (one of: {names})")
    return phase


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


def ramdisk_arg(args: argparse.Namespace) -> tuple[int | None, int]:
    """``--ramdisk ADDR:SIZE``: (address or None for the loader's choice, size)."""
    if not args.ramdisk:
        return None, 16 << 20
    try:
        a, colon, s = args.ramdisk.partition(":")
        return parse_int(a, bits=52), parse_size(s) if colon else 16 << 20
    except ValueError as e:
        raise UsageError(f"--ramdisk {args.ramdisk!r}: {e} (want ADDR:SIZE)") from None


def e820_arg(args: argparse.Namespace, limit: int = MAX_MEM_5LEVEL, space: str = "the 52-bit physical address "
              "space", fits: str = "4095T") -> list[Region]:
    """The memory map: ``--e820 FILE`` or the PC layout of ``--mem`` (default 4 GiB), ending at most at
    ``limit``."""
    e820 = read_e820(args.e820) if args.e820 else pc_e820(args.mem or 4 << 30)
    top = max((r.end for r in e820), default=0)
    if top > limit:
        where = args.e820 if args.e820 else f"--mem {size_text(args.mem or 0)}"
        why = "" if args.e820 else (" (the PC layout moves 1 GiB of RAM above 4 GiB for the PCI hole: at most "
                                    f"--mem {fits} fits)")
        raise UsageError(f"{where}: the memory map ends at {top:#x}, beyond {space}{why}")
    return e820


def cpu_identity(args: argparse.Namespace) -> CpuIdentity:
    vendor = Vendor(args.cpu_vendor)
    fam, model, step = (6, 0x3A, 9) if vendor is Vendor.INTEL else (0x17, 0x1, 2)
    try:
        return CpuIdentity(vendor, fam if args.cpu_family is None else args.cpu_family,
                           model if args.cpu_model is None else args.cpu_model,
                           step if args.cpu_stepping is None else args.cpu_stepping, args.hypervisor)
    except ValueError as e:
        raise UsageError(str(e)) from None


def write_core(path: str, write: Callable[[], None]) -> None:
    """Run a core writer for ``--save-core PATH``: a refused target (device, FIFO, symlink…) is the writer's
    own one line; any other failure says which core could not be written. Both are bad input (exit 2)."""
    from earlymm.images import ImageError, WriteError

    try:
        write()
    except WriteError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError, ImageError) as e:
        raise UsageError(f"cannot write core {path}: {e}") from None


def print_report(args: argparse.Namespace, result: R, crashed: bool, tw: TraceWrites | None,
                 to_json: Callable[..., dict[str, Any]], render_text: Callable[..., str]) -> int:
    """A boot's report on stdout — ``--json`` (with ``--trace-writes``' part), else the text (rich on a
    terminal) — and the command's exit code: ``EXIT_CRASH`` when the machine crashed. Every boot path's."""
    if args.json:
        import json

        doc = to_json(result, events=args.trace)
        if tw is not None:
            tw.add_json(doc)
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        text = render_text(result, trace=args.trace)
        if tw is not None:
            text = tw.text(text)
        if sys.stdout.isatty():
            print_rich(text)
        else:
            sys.stdout.write(text + "\n")
    return EXIT_CRASH if crashed else EXIT_OK
