"""The ``earlymm`` command: argparse wiring only; each sub-command lives in its own module."""

from __future__ import annotations

import os
import sys

from earlymm import __version__
from earlymm.cli import boot_cmd, gdb_cmd, ptdump_cmd, translate_cmd
from earlymm.cli.common import EXIT_INTERNAL, EXIT_USAGE, Parser, UsageError


def build_parser() -> Parser:
    p = Parser(prog="earlymm", description="An executable model of x86 paging and Linux early-boot page tables.")
    p.add_argument("--version", action="version", version=f"earlymm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    boot_cmd.add_parser(sub)
    translate_cmd.add_parser(sub)
    gdb_cmd.add_parser(sub)
    ptdump_cmd.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # usage errors (already printed as one line), --help, --version
        return int(e.code or 0)
    # argparse stops filling a '*' positional at the first option; addresses given after options
    # (``translate core --absent zero 0x…``) arrive here and belong to it.
    if extra and getattr(args, "command", None) == "translate" and not any(e.startswith("-") for e in extra):
        args.va = list(args.va) + extra
    elif extra:
        sys.stderr.write(f"earlymm: error: unrecognized arguments: {' '.join(extra)}\n")
        return EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
