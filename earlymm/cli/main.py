"""The ``earlymm`` command: argparse wiring only; each sub-command lives in its own module."""

from __future__ import annotations

import gc
import importlib
import os
import sys

from earlymm import __version__
from earlymm.cli.common import EXIT_INTERNAL, EXIT_USAGE, Parser, UsageError

# Sub-commands and their modules: only the one asked for is imported, so `earlymm translate` does not pay
# for loading the boot model (and the reverse).
COMMANDS = {
    "boot": ("earlymm.cli.boot_cmd", "run Linux x86-64's early boot on the simulated machine"),
    "translate": ("earlymm.cli.translate_cmd", "walk the page tables of a memory image for given accesses"),
    "ptdump": ("earlymm.cli.ptdump_cmd", "list every mapping of an address space (Linux / QEMU / JSON), or audit"),
    "matrix": ("earlymm.cli.matrix_cmd", "boot every combination of a grid of machines; outcomes grouped by failure"),
    "gdb-script": ("earlymm.cli.gdb_cmd", "print the path of the gdb command file for live QEMU guests"),
    "rmap": ("earlymm.cli.rmap_cmd", "every virtual address that maps a physical address, in every address space"),
    "diff": ("earlymm.cli.diff_cmd", "what changed between two cores, two CR3s or two boot phases"),
}


def build_parser(command: str | None = None) -> Parser:
    """The parser for one sub-command (all of them when ``command`` is None, e.g. for docs)."""
    p = Parser(prog="earlymm", description="An executable model of x86 paging and Linux early-boot page tables.")
    p.add_argument("--version", action="version", version=f"earlymm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module, _help) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).add_parser(sub)
    return p


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: earlymm [--version] COMMAND [options]", "",
             "An executable model of x86 paging and Linux early-boot page tables.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_m, help_) in COMMANDS.items()]
    lines += ["", "'earlymm COMMAND --help' describes a command."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(_usage())
        return 0 if argv else EXIT_USAGE
    if first not in COMMANDS and argv[0] != "--version":
        sys.stderr.write(f"earlymm: error: unknown command {first!r} (one of: {', '.join(COMMANDS)})\n")
        return EXIT_USAGE
    parser = build_parser(first)
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # usage errors (already printed as one line), --help, --version
        return int(e.code or 0)
    # argparse stops filling a '*' positional at the first option; addresses given after options
    # (``translate core --absent zero 0x…``, or after ``--``) arrive here and belong to it. Before a
    # ``--`` anything that looks like an option is one argparse did not know; after it, nothing is.
    if extra and getattr(args, "command", None) == "translate":
        cut = extra.index("--") if "--" in extra else len(extra)
        before, after = extra[:cut], extra[cut + 1:]
        unknown = [e for e in before if e.startswith("-")]
        if unknown:
            sys.stderr.write(f"earlymm: error: unrecognized arguments: {' '.join(unknown)}\n")
            return EXIT_USAGE
        args.va = [v for v in args.va if v != "--"] + before + after
    elif extra:
        sys.stderr.write(f"earlymm: error: unrecognized arguments: {' '.join(extra)}\n")
        return EXIT_USAGE
    if not getattr(args, "func", None):
        sys.stderr.write(_usage())
        return EXIT_USAGE
    try:
        code: int = args.func(args)
    except UsageError as e:
        sys.stderr.write(f"earlymm {args.command}: error: {e}\n")
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("earlymm: interrupted\n")
        return 130
    except Exception as e:  # a bug in earlymm, not bad input: one line, unless debugging
        if os.environ.get("EARLYMM_DEBUG"):
            raise
        sys.stderr.write(f"earlymm {args.command}: internal error: {type(e).__name__}: {e} "
                         "(set EARLYMM_DEBUG=1 for a traceback)\n")
        return EXIT_INTERNAL
    return code


def run() -> int:
    """The ``earlymm`` console script and ``python -m earlymm``: ``main()``, after which the process ends.

    Before it does, the objects left are moved out of the garbage collector's sight (``gc.freeze``): the
    interpreter's last collection at exit would otherwise walk every class, function and page object the
    run made — about 30 ms of an ``earlymm boot`` here — for memory the operating system takes back anyway.
    Nothing earlymm leaves depends on that collection: its files are closed before ``main`` returns and the
    standard streams are flushed at exit as always. ``main`` itself does not do it: a program calling it
    (the test suite) goes on living."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(run())
