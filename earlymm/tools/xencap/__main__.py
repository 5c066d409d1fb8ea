"""``python -m earlymm.tools.xencap``: capture, check and show Xen PV dom0 fixtures.

    python -m earlymm.tools.xencap fetch-xen [--dir captures/xen]     Debian's Xen 4.17, decompressed
    python -m earlymm.tools.xencap capture --out DIR [--cpu C --mem M --dom0-mem D ...]
    python -m earlymm.tools.xencap check FIXTURE...      the self-consistency checks; exit 1 on a problem
    python -m earlymm.tools.xencap show FIXTURE [--json] start-of-day block, per stop tables/leaves/p2m
    python -m earlymm.tools.xencap startofday CONSOLE    Xen's start-of-day block as JSON (file, .gz or -)

Exit status: 0 done (``check``: no problem), 1 problems found or the capture failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

from earlymm.tools.argtypes import OneLineParser
from earlymm.tools.midboot.fixture import FixtureError
from earlymm.tools.xencap.capture import CaptureError, add_parser_args, capture_main
from earlymm.tools.xencap.checks import builder_table_order, check_fixture, figures, stop_view
from earlymm.tools.xencap.fixture import load_xen_fixture
from earlymm.tools.xencap.hypervisor import DEFAULT_DIR, XenFetchError, fetch_xen
from earlymm.tools.xencap.p2m import P2mError
from earlymm.tools.xencap.startofday import StartOfDayError, parse_start_of_day


class InputError(Exception):
    pass


def cmd_fetch(a: argparse.Namespace) -> int:
    print(fetch_xen(Path(a.dir)))
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    found = False
    for path in a.fixtures:
        fx = load_xen_fixture(path)
        problems = check_fixture(fx)
        found |= bool(problems)
        print(f"== {fx.name}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  {p}")
    return 1 if found else 0


def cmd_show(a: argparse.Namespace) -> int:
    fx = load_xen_fixture(a.fixture)
    report: dict[str, object] = {"fixture": fx.name, "start_of_day": list(fx.start_of_day.lines),
                                 "builder_table_order": " ".join(builder_table_order(fx)), "stops": {}}
    stops: dict[str, dict[str, object]] = {}
    for s in fx.stops:
        stops[s.name] = {"model_until": s.model_until, "cr3": f"{s.cr3:#x}", "cr3_is": s.info["cr3_is"],
                         "p2m": {"va": f"{s.p2m.va:#x}", "size": len(s.p2m), "from": s.info["p2m"]["from"]},
                         **figures(stop_view(fx, s)).to_json()}
    report["stops"] = stops
    if a.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"== {fx.name}: {fx.meta['cpu']}, {fx.meta['mem']} host, dom0_mem={fx.meta['dom0_mem']}")
    print("\n".join(f"  {ln}" for ln in fx.start_of_day.lines))
    print(f"  builder's tables: {report['builder_table_order']}")
    for name, st in stops.items():
        print(f"-- {name}: " + ", ".join(f"{k} {v}" for k, v in st.items()))
    return 0


def cmd_startofday(a: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.buffer.read() if a.console == "-" else Path(a.console).read_bytes()
    except OSError as e:
        raise InputError(f"{a.console}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InputError(f"{a.console}: {e}") from None
    json.dump(parse_start_of_day(raw.decode(errors="replace")).to_json(), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m earlymm.tools.xencap", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("fetch-xen", help="apt-get download Debian's Xen 4.17 and decompress it")
    s.add_argument("--dir", default=str(DEFAULT_DIR), help=f"cache directory (default {DEFAULT_DIR})")
    s.set_defaults(func=cmd_fetch)
    s = sub.add_parser("capture", help="boot Xen + dom0 under QEMU and record the three stops")
    add_parser_args(s)
    s.set_defaults(func=capture_main)
    s = sub.add_parser("check", help="check fixtures for self-consistency")
    s.add_argument("fixtures", nargs="+")
    s.set_defaults(func=cmd_check)
    s = sub.add_parser("show", help="a fixture's start-of-day block and per-stop figures")
    s.add_argument("fixture")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)
    s = sub.add_parser("startofday", help="parse Xen's start-of-day block out of a console log")
    s.add_argument("console", help="console log (plain or gzipped), or - for stdin")
    s.set_defaults(func=cmd_startofday)
    try:
        a = p.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return int(a.func(a))
    except (FixtureError, StartOfDayError, P2mError, InputError) as e:
        print(f"xencap: error: {e}", file=sys.stderr)
        return 2
    except (CaptureError, XenFetchError) as e:
        print(f"xencap: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
