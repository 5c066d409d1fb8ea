"""What ``earlymm-translate`` does, independent of gdb itself, and what the live commands share.

Each command takes its argument vector and a :class:`~earlymm.tools.gdb.target.LiveTarget` and returns
an :class:`Output`: the text to print and side remarks for stderr. The order matters: gdb expressions
in the arguments and the registers are read in the stub's normal (virtual) mode; only the page-table
walk runs in physical-memory mode, because that is the only part that must not depend on the guest's
own mappings (its direct map may not exist yet).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import NoReturn

from earlymm.arch.addr import parse_int
from earlymm.arch.modes import Features
from earlymm.hw.access import AccessKind
from earlymm.hw.cpu import Cpu
from earlymm.tools.argtypes import cpl_arg, hexint, int_range, uint_bits
from earlymm.tools.gdb.physmem import GdbPhysFrames
from earlymm.tools.gdb.target import CONTROL_REGISTERS, LiveTarget, TargetError
from earlymm.tools.machine_view import RegOverrides, SetupError, infer_registers, make_cpu
from earlymm.tools.symbols.kaslr import Symbolizer, Walker, symbolizer_for
from earlymm.tools.symbols.load import load_symbols
from earlymm.tools.symbols.table import SymbolError, SymbolTable, parse_symbol_ref
from earlymm.tools.translate import Request, run, to_json, to_text

TRANSLATE = "earlymm-translate"


@dataclass(frozen=True, slots=True)
class Output:
    """What a command prints: ``text`` on gdb's stdout, each of ``messages`` as a line on its stderr
    (notes about the guest, collapsed ranges, audit logs), so ``--json`` output stays parseable."""

    text: str
    messages: tuple[str, ...] = ()


class CommandError(Exception):
    """Bad arguments or a guest the command cannot work on: one line, shown by gdb as an error."""


class HelpRequested(Exception):
    """``--help`` was given; the argument is the help text to print."""


class CommandParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting: exiting would take gdb down with it."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise CommandError((message or f"exit status {status}").strip())

    def print_help(self, file: object = None) -> None:
        raise HelpRequested(self.format_help())


def add_machine_options(p: argparse.ArgumentParser, registers: tuple[str, ...] = CONTROL_REGISTERS) -> None:
    for r in registers:
        p.add_argument(f"--{r}", type=hexint, help=f"use this {r.upper()} instead of the vCPU's")
    p.add_argument("--features", default="all",
                   help="CPU features the walk assumes (the stub cannot report CPUID): all, none, or a list "
                        "like nx,gbpages,-smap (default all)")
    p.add_argument("--maxphyaddr", type=int_range(32, 52, "MAXPHYADDR"), default=52,
                   help="physical-address width for reserved-bit checks (qemu64 has 40; default 52)")
    p.add_argument("--symbols", metavar="FILE",
                   help="kernel symbols (/proc/kallsyms text, System.map or vmlinux ELF): output labelled "
                        "name+0xoff, and names from FILE usable as addresses (no gdb symbols needed)")
    p.add_argument("--kaslr-offset", type=hexint, metavar="OFFSET",
                   help="KASLR slide to add to FILE's addresses (default: derived from the live tables)")


def load_table(args: argparse.Namespace) -> SymbolTable | None:
    """The --symbols file (read before the guest is touched: a bad file costs nothing)."""
    if args.symbols is None:
        if args.kaslr_offset is not None:
            raise CommandError("--kaslr-offset applies to the addresses of --symbols FILE, which was not given")
        return None
    try:
        return load_symbols(args.symbols)
    except SymbolError as e:
        raise CommandError(str(e)) from None


def live_symbolizer(table: SymbolTable | None, args: argparse.Namespace, cpu: Cpu) -> tuple[Symbolizer | None,
                                                                                            tuple[str, ...]]:
    """The symbolizer over the live tables (in physical-memory mode) and its notes."""
    if table is None:
        return None, ()
    plan = cpu.mmu.plan
    sym = symbolizer_for(table, Walker(cpu.mem, plan.mode, cpu.regs.cr3, cpu.regs.cr4, plan.nxe), args.kaslr_offset)
    return sym, sym.placement.notes


def translate_parser() -> CommandParser:
    p = CommandParser(prog=TRANSLATE, allow_abbrev=False,
                description="Walk the live guest's page tables for each address, reading the tables from "
                            "guest-physical memory (QEMU's physical-memory mode), so it works before the "
                            "kernel has a direct map. A/D updates are shown, never written to the guest.")
    p.add_argument("va", nargs="+", help="virtual addresses: numbers (0x… or decimal) or gdb expressions ($pc)")
    p.add_argument("--access", default="read", help="read, write or exec (default read)")
    p.add_argument("--cpl", type=cpl_arg, help="privilege level of the access, 0 or 3 (default: the vCPU's, "
                                               "the RPL of its SS selector, or 0 if the stub has no SS)")
    p.add_argument("--ac", action="store_true", help="EFLAGS.AC=1 (SMAP override for explicit accesses)")
    p.add_argument("--pkru", type=uint_bits(32, "PKRU"), default=None,
                   help="PKRU, 32 bits (default: the vCPU's if the stub has it, else 0)")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per address")
    add_machine_options(p)
    return p


@dataclass(frozen=True, slots=True)
class LiveMachine:
    """The vCPU's paging registers and what the walk assumes about the CPU."""

    regs: tuple[int, int, int, int]  # cr0, cr3, cr4, efer
    features: Features
    notes: tuple[str, ...] = ()


def read_machine(target: LiveTarget, args: argparse.Namespace, cr3: int | None = None) -> LiveMachine:
    """CR0/CR3/CR4/EFER from the command line (or ``cr3``), else from the stub (QEMU describes all four)."""
    try:
        features = Features.parse(args.features, args.maxphyaddr)
    except ValueError as e:
        raise CommandError(str(e)) from None
    values = {}
    for name in CONTROL_REGISTERS:
        given = cr3 if name == "cr3" and cr3 is not None else getattr(args, name, None)
        values[name] = given if given is not None else target.register(name)
    missing = [n for n in ("cr0", "cr3", "cr4") if values[n] is None]
    if missing:
        raise CommandError(f"the remote stub does not report {', '.join(missing)} (QEMU's x86 gdbstub does); "
                           f"give {' '.join('--' + n for n in missing)}")
    notes = []
    if values["efer"] is None:
        notes.append("the stub does not report EFER: assumed from CR0/CR4 (give --efer to be exact)")
    try:
        regs = infer_registers(None, RegOverrides(values["cr0"], values["cr3"], values["cr4"], values["efer"]))
    except SetupError as e:
        raise CommandError(str(e)) from None
    return LiveMachine(regs, features, tuple(notes))


def _live_cpu(frames: GdbPhysFrames, machine: LiveMachine, pkru: int) -> Cpu:
    try:
        # absent_zero=False: a table in a hole (MMIO, no RAM) is reported as unreadable, not as zeros.
        return make_cpu(frames, machine.regs, machine.features, absent_zero=False, pkru=pkru)
    except SetupError as e:
        raise CommandError(f"{e} (CR0={machine.regs[0]:#x} CR3={machine.regs[1]:#x} "
                           f"CR4={machine.regs[2]:#x} EFER={machine.regs[3]:#x})") from None


def address(target: LiveTarget, token: str) -> int:
    """A number, else a gdb expression (evaluated now, in the stub's normal mode). A token made only of
    digits (and an ``0x``) is a number and parsed strictly: gdb would read ``0400000`` as octal, so the
    ambiguous zero-padded form is refused instead of guessed."""
    t = token.strip()
    if t[:1].isdigit() and t.isascii() and t.isalnum():
        try:
            return parse_int(t)
        except ValueError as e:
            raise CommandError(str(e)) from None
    try:
        return target.evaluate(token)
    except TargetError as e:
        raise CommandError(str(e)) from None


def live_cpl(target: LiveTarget) -> int:
    """The vCPU's privilege level: SS.RPL, which equals the CPL outside real mode (QEMU's gdbstub gives
    the selectors, not the descriptor caches); 0 when the stub does not describe SS."""
    ss = target.register("ss")
    return 0 if ss is None else ss & 3


MEMORY_MAP_NOTE = ("QEMU's memory map is unavailable (monitor info mtree -f): unassigned physical memory "
                   "reads as zeros")


def _named(sym: Symbolizer, token: str) -> int:
    va = sym.resolve(token)
    assert va is not None  # the token was checked to name a symbol of the file
    return va


def translate(target: LiveTarget, argv: list[str]) -> Output:
    """``earlymm-translate``: the text (or JSON) to print. Raises CommandError or HelpRequested."""
    args = translate_parser().parse_args(argv)
    try:
        kind = AccessKind.parse(args.access)
    except ValueError as e:
        raise CommandError(str(e)) from None
    table = load_table(args)
    # names the symbol file defines are resolved once the tables are known (the KASLR slide); anything else
    # is a number or a gdb expression, evaluated now in the stub's normal mode
    named = [table is not None and (ref := parse_symbol_ref(t)) is not None and ref[0] in table.by_name
             for t in args.va]
    vas = [0 if n else address(target, t) for t, n in zip(args.va, named, strict=True)]
    if any(not 0 <= va < 1 << 64 for va in vas):
        raise CommandError("addresses must fit in 64 bits")
    try:
        machine = read_machine(target, args)
        pkru = args.pkru if args.pkru is not None else (target.register("pkru") or 0)
        cpl = args.cpl if args.cpl is not None else live_cpl(target)
        ram = target.ram_ranges()
        with target.physical_memory() as read:
            frames = GdbPhysFrames(read, ram)
            cpu = _live_cpu(frames, machine, pkru)
            sym, sym_notes = live_symbolizer(table, args, cpu)
            if sym is not None:
                try:
                    vas = [_named(sym, t) if n else va for t, n, va in zip(args.va, named, vas, strict=True)]
                except SymbolError as e:
                    raise CommandError(str(e)) from None
            outcomes = run(cpu, [Request(va, kind, cpl, args.ac) for va in vas])
            if args.json:
                text = json.dumps([to_json(cpu, o, sym) for o in outcomes], indent=1) + "\n"
            else:
                text = "\n\n".join(to_text(cpu, o, sym) for o in outcomes) + "\n"
        return Output(text, machine.notes + (() if ram is not None else (MEMORY_MAP_NOTE,)) + sym_notes)
    except TargetError as e:
        raise CommandError(str(e)) from None
