"""``--symbols FILE`` and ``--kaslr-offset OFFSET``, shared by translate, ptdump, rmap and diff."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from earlymm.arch.addr import parse_int
from earlymm.cli.common import UsageError, hexint

if TYPE_CHECKING:  # the symbol modules are loaded only when --symbols or a name is given
    from earlymm.tools.symbols.kaslr import Symbolizer, Walker

SYMBOLS_HELP = ("kernel symbols: /proc/kallsyms text, a System.map or a vmlinux ELF. Addresses in the output are "
                "labelled name+0xoff, and an address argument may be a symbol (init_top_pgt, idt_table+0x10)")
NUMBERISH = frozenset("0123456789abcdefABCDEFxX_")  # characters of a mistyped number, not of a name
KASLR_HELP = ("the KASLR slide to add to the symbol file's addresses (default: derived from the image — the lowest "
              "mapping of the kernel image at __START_KERNEL_map is _text; 0 for a kallsyms of the same boot)")


def add_symbol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", metavar="FILE", help=SYMBOLS_HELP)
    p.add_argument("--kaslr-offset", type=hexint, metavar="OFFSET", help=KASLR_HELP)


def load_symbolizer(args: argparse.Namespace, walker: Walker | None, command: str) -> Symbolizer | None:
    """The symbolizer the options ask for (None without --symbols); notes about the placement go to
    stderr. Raises ``UsageError``."""
    if args.symbols is None:
        if args.kaslr_offset is not None:
            raise UsageError("--kaslr-offset applies to the addresses of --symbols FILE, which was not given")
        return None
    from earlymm.tools.symbols.kaslr import symbolizer_for
    from earlymm.tools.symbols.load import load_symbols
    from earlymm.tools.symbols.table import SymbolError

    try:
        table = load_symbols(args.symbols)
    except SymbolError as e:
        raise UsageError(str(e)) from None
    sym = symbolizer_for(table, walker, args.kaslr_offset)
    for note in sym.placement.notes:
        sys.stderr.write(f"earlymm {command}: note: {note}\n")
    return sym


def resolve_address(token: str, sym: Symbolizer | None) -> int:
    """A number, or (with --symbols) ``name`` / ``name+OFFSET``. Raises ``UsageError``."""
    try:
        return parse_int(token)
    except ValueError as e:
        problem = str(e)
    from earlymm.tools.symbols.table import SymbolError, parse_symbol_ref

    named = parse_symbol_ref(token) is not None
    wordy = named and any(c not in NUMBERISH for c in token.strip().partition("+")[0])
    if sym is not None and named:
        try:
            va = sym.resolve(token)
        except SymbolError as e:
            raise UsageError(str(e) if wordy else f"{e}, and {problem}") from None
        assert va is not None
        return va
    if wordy:
        raise UsageError(f"{token.strip()!r} is not a number; to use symbol names, give --symbols FILE")
    raise UsageError(problem)
