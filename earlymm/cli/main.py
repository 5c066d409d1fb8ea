"""The ``earlymm`` command: argparse wiring only; each sub-command lives in its own module."""

from __future__ import annotations

import sys

from earlymm import __version__
from earlymm.cli import boot_cmd, translate_cmd
from earlymm.cli.common import EXIT_USAGE, Parser, UsageError


def build_parser() -> Parser:
    p = Parser(prog="earlymm", description="An executable model of x86 paging and Linux early-boot page tables.")
    p.add_argument("--version", action="version", version=f"earlymm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    boot_cmd.add_parser(sub)
    translate_cmd.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    return code


if __name__ == "__main__":
    sys.exit(main())
