"""``python -m earlymm.tools.midboot``: capture, inspect and compare mid-boot fixtures.

    python -m earlymm.tools.midboot capture --out DIR [--cpu C --mem M --append A]   (= qemu_capture midboot)
    python -m earlymm.tools.midboot args FIXTURE              the earlymm boot arguments for its machine
    python -m earlymm.tools.midboot leaves FIXTURE [--stop S] the present leaves and links from CR3
    python -m earlymm.tools.midboot compare FIXTURE... [--stop S] [--json]
                                                               the model against each fixture, per stop

``compare`` exits 0 when every stop matches, 1 when there are differences, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from earlymm.tools.machine_view import SetupError
from earlymm.tools.midboot.compare import compare_decompressor, compare_stop, summary
from earlymm.tools.midboot.enumerate import enumerate_space, flag_text
from earlymm.tools.midboot.fixture import Fixture, FixtureError, load_fixture
from earlymm.tools.midboot.model import ModelError, boot_args, e820_text, run_model, symbols_text


def _stops(fx: Fixture, name: str | None) -> list[str]:
    return [fx.stop(name).name] if name else [s.name for s in fx.stops]


def cmd_args(a: argparse.Namespace) -> int:
    """The boot command for the fixture's machine; the e820 and symbol files it names go to stderr
    (``--e820``'s first, then ``--kernel-symbols``'), so nothing is written where the user did not ask."""
    fx = load_fixture(a.fixture)
    print(e820_text(fx), end="", file=sys.stderr)
    print(symbols_text(fx), end="", file=sys.stderr)
    print(shlex.join(["earlymm", *boot_args(fx, f"{fx.name}.e820", f"{fx.name}.kallsyms")]))
    return 0


def cmd_leaves(a: argparse.Namespace) -> int:
    fx = load_fixture(a.fixture)
    for name in _stops(fx, a.stop):
        s = fx.stop(name)
        en = enumerate_space(s.memory(), s.regs, fx.features)
        print(f"== {name}: CR3 {s.regs[1]:#x}, {len(en.leaves)} leaves, {len(en.links)} links, "
              f"next_early_pgt {s.next_early_pgt}")
        for lk in en.links:
            print(f"link {lk.level} {lk.va:#018x} -> {lk.table:#x} [{flag_text(lk.flags)}]")
        for lf in en.leaves:
            print(f"leaf {lf.va:#018x} {lf.size >> 10:7d}K -> {lf.pa:#x} [{flag_text(lf.flags, lf.size)}]")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    found = False
    report: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="earlymm-midboot-model-") as tmp:
        for path in a.fixtures:
            fx = load_fixture(path)
            for name in _stops(fx, a.stop):
                stop = fx.stop(name)
                try:
                    model = run_model(fx, stop.model_until, Path(tmp))
                except ModelError as e:  # the model refusing the machine is a difference too
                    diffs, figures = [f"model refused the machine: {e}"], {}
                else:
                    diffs = compare_stop(stop, fx.features, model, fx.roles(stop)) + compare_decompressor(fx, model)
                    figures = summary(stop, fx.features, model)
                found |= bool(diffs)
                report.setdefault(fx.name, {})[name] = {"model_until": stop.model_until, "differences": diffs,
                                                        **figures}
                if not a.json:
                    print(f"== {fx.name} at {name} (model --until {stop.model_until}): {len(diffs)} difference(s)"
                          + "".join(f"; {k} {v}" for k, v in figures.items()))
                    for d in diffs:
                        print(f"  {d}")
    if a.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["capture"]:
        from earlymm.tools.qemu_capture import main as capture_main

        return capture_main(["midboot", *argv[1:]])
    p = argparse.ArgumentParser(prog="python -m earlymm.tools.midboot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("args", help="the earlymm boot arguments for a fixture's machine (e820 file on stderr)")
    s.add_argument("fixture")
    s.set_defaults(func=cmd_args)
    s = sub.add_parser("leaves", help="present leaves and table links reachable from CR3")
    s.add_argument("fixture")
    s.add_argument("--stop")
    s.set_defaults(func=cmd_leaves)
    s = sub.add_parser("compare", help="run the model on each fixture's machine and list the differences")
    s.add_argument("fixtures", nargs="+")
    s.add_argument("--stop", help="one stop (symbol, or the model's --until phase)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_compare)
    a = p.parse_args(argv)
    try:
        return int(a.func(a))
    except (FixtureError, ModelError, SetupError, KeyError) as e:
        print(f"midboot: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
